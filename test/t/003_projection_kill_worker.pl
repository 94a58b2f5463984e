# test/t/003_projection_kill_worker.pl - a worker killed mid-batch
#
# A deferred projection works through a backlog of 12,000 events, 1,000 per
# batch, with a handler that sleeps half a millisecond per event, so that a
# batch takes most of a second.  Three times, while the worker is inside a
# batch (its handler sleeping), it is killed with SIGKILL.  The postmaster
# then restarts every process (a backend that dies that way may have left
# shared memory in any state), the launcher starts a new worker, and the
# worker goes on from the last committed checkpoint.  Once it has caught
# up, every event has taken effect exactly once: the read tables equal a
# replay of the log written as plain SQL (EXCEPT ALL both ways, as pg_ivm's
# check_mv() does), and no position was applied twice.  The killed batches'
# work was rolled back with them, and the checkpoint never went back.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use Time::HiRes qw(usleep);

my $events = 12000;
my $kills = 3;

my $node = cqrs_node('kill_worker',
	q{cqrs.batch_size = 1000},
	q{restart_after_crash = on});

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE applied ("position" bigint PRIMARY KEY, stream text NOT NULL,
                      version bigint NOT NULL, times int NOT NULL DEFAULT 1);
CREATE TABLE totals (stream text PRIMARY KEY, events bigint NOT NULL,
                     amount bigint NOT NULL, last_version bigint NOT NULL);
CREATE FUNCTION project(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep(0.0005);
  INSERT INTO applied ("position", stream, version) VALUES (e."position", e.stream, e.version)
  ON CONFLICT ("position") DO UPDATE SET times = applied.times + 1;
  INSERT INTO totals VALUES (e.stream, 1, (e.data->>'amount')::bigint, e.version)
  ON CONFLICT (stream) DO UPDATE
    SET events = totals.events + 1, amount = totals.amount + excluded.amount,
        last_version = excluded.last_version;
END $$;
-- the replay: what the read tables must hold once every event is applied
CREATE VIEW problems AS
  WITH want_applied AS (SELECT "position", stream, version, 1 AS times FROM cqrs.events),
  got_applied AS (SELECT "position", stream, version, times FROM applied),
  want_totals AS (
    SELECT stream, count(*) AS events, sum((data->>'amount')::bigint) AS amount,
           max(version) AS last_version
      FROM cqrs.events GROUP BY stream),
  got_totals AS (SELECT stream, events, amount, last_version FROM totals)
  SELECT 'applied: missing' AS problem, w::text AS item
    FROM (SELECT * FROM want_applied EXCEPT ALL SELECT * FROM got_applied) w
  UNION ALL
  SELECT 'applied: extra', g::text FROM (SELECT * FROM got_applied EXCEPT ALL SELECT * FROM want_applied) g
  UNION ALL
  SELECT 'totals: missing', w::text FROM (SELECT * FROM want_totals EXCEPT ALL SELECT * FROM got_totals) w
  UNION ALL
  SELECT 'totals: extra', g::text FROM (SELECT * FROM got_totals EXCEPT ALL SELECT * FROM want_totals) g;
});
$node->safe_psql('postgres',
	"SELECT count(*) FROM (SELECT cqrs.append('s-' || (i % 24), 'T', "
	  . "jsonb_build_object('amount', i % 7)) FROM generate_series(1, $events) i) x");
$node->safe_psql('postgres',
	q{SELECT cqrs.create_projection('p', 'project', 'deferred', '{applied,totals}')});

my $position = q{SELECT "position" FROM cqrs.projection_status WHERE name = 'p'};
my $last_checkpoint = 0;
for my $k (1 .. $kills)
{
	# Somewhere along the backlog, with the handler sleeping inside a batch.
	my $from = int($events * $k / ($kills + 1));
	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT ($position) >= $from
		   AND EXISTS (SELECT FROM pg_stat_activity
		                WHERE backend_type = 'pg_cqrs worker' AND wait_event = 'PgSleep')}),
		"kill $k: the worker is inside a batch past position $from");
	# Not "AND wait_event = 'PgSleep'" again: between two sleeps the worker
	# is briefly elsewhere in the same batch, and the pid must not be lost.
	my $pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker'});
	die "kill $k: no worker to kill\n" unless $pid =~ /^\d+$/;
	my $before = $node->safe_psql('postgres', $position);
	cmp_ok($before, '<', $events, "kill $k: the worker has not caught up yet");
	cmp_ok($before, '>=', $last_checkpoint, "kill $k: the checkpoint never went back");
	ok(kill('KILL', $pid), "kill $k: SIGKILL the worker (pid $pid)");

	# The postmaster restarts everything; wait until a new worker runs.
	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT EXISTS (SELECT FROM pg_stat_activity
		                WHERE backend_type = 'pg_cqrs worker' AND pid <> $pid)}),
		"kill $k: a new worker runs after the restart");
	my $after = $node->safe_psql('postgres', $position);
	cmp_ok($after, '>=', $before, "kill $k: the checkpoint survived the crash");
	$last_checkpoint = $after;
}

ok( $node->poll_query_until(
		'postgres', qq{SELECT ($position) = (SELECT max("position") FROM cqrs.events)}),
	'the worker catches up after the kills');
like(slurp_file($node->logfile),
	qr/background worker "pg_cqrs worker" \(PID \d+\) was terminated by signal 9/,
	'the server log shows the worker was killed');

is($node->safe_psql('postgres', 'SELECT count(*) FROM applied WHERE times <> 1'),
	'0', 'no event was applied twice');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied'),
	$events, 'every event was applied');
is($node->safe_psql('postgres', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM problems}),
	'', 'the read tables equal a replay of the log');
is( $node->safe_psql(
		'postgres',
		q{SELECT state || ' ' || lag_events || ' ' || coalesce(last_error, '-')
		    FROM cqrs.projection_status WHERE name = 'p'}),
	'running 0 -',
	'the projection is running, with no lag and no error');

# And it goes on: a new event is applied promptly.
my $pos = $node->safe_psql('postgres',
	q{SELECT "position" FROM cqrs.append('s-1', 'T', '{"amount": 1}')});
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('p', $pos, '30 s')"),
	't', 'an event appended afterwards is applied');
is($node->safe_psql('postgres', q{SELECT count(*) FROM problems}),
	'0', 'the read tables still equal a replay of the log');

$node->stop;
done_testing();
