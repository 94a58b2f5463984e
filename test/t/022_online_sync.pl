# test/t/022_online_sync.pl - crashes in the middle of an online creation
# of a sync projection and of a concurrent replay
#
# create_projection(..., 'sync') applies history before it inserts its
# catalog row, in the caller's transaction: a crash in the middle must
# leave nothing (no projection, no rows, no digest trigger), and creating
# it again works.  cqrs.replay(name, concurrently => true) commits the
# 'catching up' mark at once; the worker rebuilds in a transaction of its
# own: a crash in the middle of the rebuild must leave a state the worker
# finishes after the restart, with tables equal to a fresh replay and
# verify matching.
#
# The handler takes a shared advisory lock on one event in the middle of
# the log (its data has gate = true) while another session holds it
# exclusively, so the catch-up is for sure in the middle when the server
# goes down: by SIGKILL of the backend doing it (the postmaster
# reinitialises), or by an immediate shutdown (recovery from WAL).

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $events = 5000;
my $gate = 3000;

# PostgreSQL::Test::Cluster turns restart_after_crash off; SIGKILL needs it.
my $node = cqrs_node('online_sync', 'restart_after_crash = on');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE applied ("position" bigint PRIMARY KEY, stream text NOT NULL,
                      times int NOT NULL DEFAULT 1);
CREATE FUNCTION project(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (e.data->>'gate')::boolean THEN
    PERFORM pg_advisory_xact_lock_shared(1);
  END IF;
  INSERT INTO applied VALUES (e."position", e.stream)
  ON CONFLICT ("position") DO UPDATE SET times = applied.times + 1;
END $$;
-- every difference between the read table and the log
CREATE VIEW problems AS
  SELECT 'missing' AS problem, w::text AS item
    FROM (SELECT "position", stream, 1 FROM cqrs.events
          EXCEPT ALL SELECT "position", stream, times FROM applied) w
  UNION ALL
  SELECT 'extra', g::text
    FROM (SELECT "position", stream, times FROM applied
          EXCEPT ALL SELECT "position", stream, 1 FROM cqrs.events) g;
});
$node->safe_psql('postgres',
	"SELECT count(*) FROM (SELECT cqrs.append('s-' || (i % 40), 'T', "
	  . "jsonb_build_object('gate', i = $gate)) FROM generate_series(1, $events) i) x");

my $leftovers_sql = q{
SELECT (SELECT count(*) FROM cqrs.projections) || ' ' || (SELECT count(*) FROM applied)
    || ' ' || (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'applied'::regclass)
    || ' ' || (SELECT count(*) FROM cqrs.projection_digests)
};
my $table_sql =
  q{SELECT md5(string_agg(t::text, ';' ORDER BY t."position")) FROM applied t};

# Wait until the backend $pid waits at the gate (an advisory lock).
sub at_gate
{
	my ($pid, $what) = @_;
	ok( $node->poll_query_until(
			'postgres', qq{
	SELECT wait_event_type = 'Lock' AND wait_event = 'advisory'
	  FROM pg_stat_activity WHERE pid = $pid}),
		"$what waits at the gate in the middle of the log");
}

# ------------------------------------------------------------------------
# A crash in the middle of an online creation

foreach my $how ('SIGKILL', 'immediate shutdown')
{
	my $blocker = $node->background_psql('postgres');
	$blocker->query_safe('SELECT pg_advisory_lock(1)');
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_until(qr/creating/,
		"\\echo creating\nSELECT cqrs.create_projection('p', 'project', 'sync', '{applied}');\n");
	at_gate($pid, "the creation ($how)");

	# appends go on meanwhile, and commit
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM cqrs.append('during-create', 'T', '{}')}),
		'1',
		"an append completes during the creation ($how)");

	if ($how eq 'SIGKILL')
	{
		my $offset = -s $node->logfile;
		kill 'KILL', $pid;
		$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
		$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
	}
	else
	{
		$node->stop('immediate');
		$node->start;
	}
	eval { $_->quit } foreach ($bg, $blocker);
	is($node->safe_psql('postgres', $leftovers_sql),
		'0 0 0 0', "$how during the creation: no projection, row, trigger or digest left");
}

# created again, without the gate closed: complete, and appends apply it
$node->safe_psql('postgres',
	q{SELECT cqrs.create_projection('p', 'project', 'sync', '{applied}')});
$node->safe_psql('postgres', q{SELECT cqrs.append('after-create', 'T', '{}')});
is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
	'0', 'created again after the crashes: the read table holds the log');
is($node->safe_psql('postgres', q{SELECT bool_and(matches) FROM cqrs.verify('p')}),
	't', 'verify matches after the creation');

# ------------------------------------------------------------------------
# A crash in the middle of a concurrent replay's rebuild, run by the worker

foreach my $how ('SIGKILL', 'immediate shutdown')
{
	my $blocker = $node->background_psql('postgres');
	my $log_offset = -s $node->logfile;
	$blocker->query_safe('SELECT pg_advisory_lock(1)');
	is( $node->safe_psql(
			'postgres',
			q{SELECT cqrs.replay('p', concurrently => true) IS NULL}),
		't', "replay concurrently returns NULL ($how)");
	my $pid;
	ok( $node->poll_query_until(
			'postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity
	 WHERE backend_type = 'pg_cqrs worker' AND wait_event = 'advisory'}),
		"the worker rebuilds, held at the gate ($how)");
	$pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker' AND wait_event = 'advisory'});
	is( $node->safe_psql(
			'postgres',
			q{SELECT state FROM cqrs.projection_status WHERE name = 'p'}),
		'catching up', "the projection shows it is catching up ($how)");
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM cqrs.append('during-replay', 'T', '{}')}),
		'1',
		"an append completes during the rebuild ($how)");

	if ($how eq 'SIGKILL')
	{
		my $offset = -s $node->logfile;
		kill 'KILL', $pid;
		$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
		$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
	}
	else
	{
		$node->stop('immediate');
		$node->start;
	}
	eval { $blocker->quit };

	# the worker finishes it after the restart, on its own
	ok( $node->poll_query_until(
			'postgres',
			q{SELECT state = 'running' FROM cqrs.projection_status WHERE name = 'p'}),
		"after $how the worker finishes the replay");
	# and says how long appends were held at the switch (the line follows
	# the commit that shows 'running', so wait for it)
	ok( defined $node->wait_for_log(
			qr/Appends were held for at most \d+\.\d+ ms: \d+\.\d+ ms waiting for the lock, \d+\.\d+ ms applying the last \d+ events and committing/,
			$log_offset),
		"after $how the log says how long appends were held");
	ok( $node->log_contains(
			qr/sync projection "p" switched back to in-append application at position \d+/,
			$log_offset),
		"after $how the worker logs the switch");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
		'0', "after $how: the read table holds the log, each event once");
	is($node->safe_psql('postgres', q{SELECT bool_and(matches) FROM cqrs.verify('p')}),
		't', "after $how: verify matches");
	my $after = $node->safe_psql('postgres', $table_sql);
	is( $node->safe_psql(
			'postgres',
			q{SELECT cqrs.replay('p') = (SELECT count(*) FROM cqrs.events)}),
		't', "after $how: a fresh replay applies every event");
	is($node->safe_psql('postgres', $table_sql),
		$after, "after $how: the table equals a fresh replay");

	# and appends apply it again
	$node->safe_psql('postgres', q{SELECT cqrs.append('after-replay', 'T', '{}')});
	is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
		'0', "after $how: appends apply the projection again");
}

$node->stop;
done_testing();
