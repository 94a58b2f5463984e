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

our @EXPORT = qw(cqrs_node cqrs_counting_projections);

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

# cqrs_counting_projections($node) creates the extension and two
# projections counting events per stream: sync_counts (table counts) and
# deferred_counts (table dcounts); the standby and failover tests compare
# them with the log.
sub cqrs_counting_projections
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE counts (stream text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE dcounts (stream text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION count_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO counts VALUES (e.stream, 1)
  ON CONFLICT (stream) DO UPDATE SET n = counts.n + 1 $$;
CREATE FUNCTION dcount_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO dcounts VALUES (e.stream, 1)
  ON CONFLICT (stream) DO UPDATE SET n = dcounts.n + 1 $$;
SELECT cqrs.create_projection('sync_counts', 'count_handler', 'sync', '{counts}');
SELECT cqrs.create_projection('deferred_counts', 'dcount_handler', 'deferred', '{dcounts}');
});
	return;
}

1;
