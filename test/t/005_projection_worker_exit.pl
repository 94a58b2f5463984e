# test/t/005_projection_worker_exit.pl - a worker that goes away is replaced
#
# A database's worker may end while its deferred projections still run: an
# administrator terminates it (pg_terminate_backend, say to stop a handler
# that hangs), or it fails outside a batch.  The projections must not stall
# until something else happens to wake the launcher: an event appended
# afterwards is applied within a few seconds.  Each round terminates the
# worker currently serving the database, so the later rounds meet a worker
# started after the launcher's last wake-up.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('worker_exit');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE applied ("position" bigint PRIMARY KEY, times int NOT NULL DEFAULT 1);
CREATE FUNCTION project(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO applied VALUES (e."position")
  ON CONFLICT ("position") DO UPDATE SET times = applied.times + 1
$$;
SELECT cqrs.create_projection('p', 'project', 'deferred', '{applied}');
});

my $worker = q{SELECT pid FROM pg_stat_activity
                WHERE backend_type = 'pg_cqrs worker' AND datname = 'postgres'};
my $append = q{SELECT position FROM cqrs.append('s-1', 'T', '{}')};

my $pos = $node->safe_psql('postgres', $append);
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('p', $pos, '10 s')"),
	't', 'the worker applies an event');

for my $round (1 .. 3)
{
	my $pid = $node->safe_psql('postgres', $worker);
	isnt($pid, '', "round $round: a worker serves the database") or last;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"),
		't', "round $round: terminate it");
	ok( $node->poll_query_until(
			'postgres', qq{SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)}),
		"round $round: it is gone");

	$pos = $node->safe_psql('postgres', $append);
	is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('p', $pos, '10 s')"),
		't', "round $round: an event appended afterwards is applied within 10 s");
}

# Whatever the worker left, process_projections finishes; nothing twice.
$node->safe_psql('postgres', 'SELECT cqrs.process_projections()');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  (SELECT "position", 1 FROM cqrs.events
	   EXCEPT ALL SELECT "position", times FROM applied)
	  UNION ALL
	  (SELECT "position", times FROM applied
	   EXCEPT ALL SELECT "position", 1 FROM cqrs.events)) x}),
	'0',
	'every event applied, exactly once');

$node->stop;
done_testing();
