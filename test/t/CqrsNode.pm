# test/t/CqrsNode.pm - the node every pg_cqrs TAP test starts from
#
# cqrs_node($name, @conf) initialises and starts a PostgreSQL::Test::Cluster
# with the settings pg_cqrs needs (preloaded, logical WAL, our output
# plugin allowed), plus the test's own postgresql.conf lines.
package CqrsNode;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(cqrs_node);

sub cqrs_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf(
		'postgresql.conf',
		join("\n",
			"shared_preload_libraries = 'pg_cqrs'",
			'wal_level = logical',
			'max_wal_senders = 4',
			'max_replication_slots = 4',
			"output_plugin_libraries = 'pgoutput, test_decoding, pg_cqrs'",
			@conf)
		  . "\n");
	$node->start;
	return $node;
}

1;
