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

our @EXPORT = qw(cqrs_node cqrs_counting_projections cqrs_import_accounts);

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

# cqrs_import_accounts($node, $streams, $per_stream, $others) creates the
# extension and imports, with cqrs.import_events, $per_stream "Deposited"
# events into each of $streams streams acct-0 ... (interleaved), then
# $others "Noted" events into 100 streams other-0 ...: the log the
# retention and archive tests take events out of.
sub cqrs_import_accounts
{
	my ($node, $streams, $per_stream, $others) = @_;
	my $total = $streams * $per_stream;
	$node->safe_psql('postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE staging (n bigint PRIMARY KEY, stream text, type text, data jsonb);
});
	$node->safe_psql('postgres', qq{
INSERT INTO staging
SELECT g, 'acct-' || (g % $streams), 'Deposited', jsonb_build_object('g', g)
  FROM generate_series(1, $total) g;
INSERT INTO staging
SELECT $total + g, 'other-' || (g % 100), 'Noted', jsonb_build_object('g', g)
  FROM generate_series(1, $others) g;
SELECT cqrs.import_events(stream, type, data, NULL, NULL ORDER BY n) FROM staging;
});
	return;
}

1;
