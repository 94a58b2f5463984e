# test/t/012_replay_crash.pl - a crash in the middle of cqrs.replay()
#
# replay empties a projection's tables with DELETE and applies the log again
# in one transaction, so a crash before it commits must leave everything as
# it was: the read tables' old contents, the checkpoint, and the digest
# (verify still matches).  A replay after the restart works.
#
# A sync projection (p, two tables) and a deferred one (q) over 5000 events,
# each replayed by a background session.  Each handler takes a shared
# advisory lock on one event in the middle of the log (its data has gate =
# true) while another session holds the lock exclusively, so the replay is
# for sure in the middle, its DELETEs done and about 3000 events applied
# again, when the server goes down.  Twice per projection: by SIGKILL of the
# replaying backend (the postmaster reinitialises), and by an immediate
# shutdown (no shutdown checkpoint; recovery from WAL).

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

# PostgreSQL::Test::Cluster turns restart_after_crash off; the SIGKILL case
# needs it.
my $node = cqrs_node('replay_crash', 'restart_after_crash = on');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE p_applied ("position" bigint PRIMARY KEY, times int NOT NULL DEFAULT 1);
CREATE TABLE p_totals (stream text PRIMARY KEY, events bigint NOT NULL, amount bigint NOT NULL);
CREATE TABLE q_totals (stream text PRIMARY KEY, events bigint NOT NULL, amount bigint NOT NULL);
CREATE FUNCTION p_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (e.data->>'gate')::boolean THEN
    PERFORM pg_advisory_xact_lock_shared(1);
  END IF;
  INSERT INTO p_applied ("position") VALUES (e."position")
  ON CONFLICT ("position") DO UPDATE SET times = p_applied.times + 1;
  INSERT INTO p_totals VALUES (e.stream, 1, (e.data->>'amount')::bigint)
  ON CONFLICT (stream) DO UPDATE
    SET events = p_totals.events + 1, amount = p_totals.amount + excluded.amount;
END $$;
CREATE FUNCTION q_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (e.data->>'gate')::boolean THEN
    PERFORM pg_advisory_xact_lock_shared(1);
  END IF;
  INSERT INTO q_totals VALUES (e.stream, 1, (e.data->>'amount')::bigint)
  ON CONFLICT (stream) DO UPDATE
    SET events = q_totals.events + 1, amount = q_totals.amount + excluded.amount;
END $$;
-- every difference between the read tables and the log
CREATE VIEW problems AS
  WITH want_applied AS (SELECT "position", 1 AS times FROM cqrs.events),
  want_totals AS (SELECT stream, count(*) AS events, sum((data->>'amount')::bigint) AS amount
                    FROM cqrs.events GROUP BY stream)
  SELECT 'p_applied: missing' AS problem, w::text AS item
    FROM (SELECT * FROM want_applied EXCEPT ALL SELECT "position", times FROM p_applied) w
  UNION ALL
  SELECT 'p_applied: extra', g::text
    FROM (SELECT "position", times FROM p_applied EXCEPT ALL SELECT * FROM want_applied) g
  UNION ALL
  SELECT 'p_totals: missing', w::text FROM (SELECT * FROM want_totals EXCEPT ALL TABLE p_totals) w
  UNION ALL
  SELECT 'p_totals: extra', g::text FROM (TABLE p_totals EXCEPT ALL SELECT * FROM want_totals) g
  UNION ALL
  SELECT 'q_totals: missing', w::text FROM (SELECT * FROM want_totals EXCEPT ALL TABLE q_totals) w
  UNION ALL
  SELECT 'q_totals: extra', g::text FROM (TABLE q_totals EXCEPT ALL SELECT * FROM want_totals) g;
});
$node->safe_psql('postgres',
	"SELECT count(*) FROM (SELECT cqrs.append('s-' || (i % 40), 'T', "
	  . "jsonb_build_object('amount', i % 7, 'gate', i = $gate)) FROM generate_series(1, $events) i) x"
);
$node->safe_psql(
	'postgres', q{
SELECT cqrs.create_projection('p', 'p_handler', 'sync', '{p_applied,p_totals}');
SELECT cqrs.create_projection('q', 'q_handler', 'deferred', '{q_totals}');
SELECT cqrs.process_projections('q');
});
ok( $node->poll_query_until(
		'postgres', q{
	SELECT "position" = (SELECT max("position") FROM cqrs.events)
	  FROM cqrs.projections WHERE name = 'q'}),
	'the deferred projection has caught up');
is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
	'0', 'the read tables hold the log');

# What must survive a crash in the middle of a replay.
my $state_sql = q{
SELECT (SELECT md5(string_agg(t::text, ';' ORDER BY t."position")) FROM p_applied t)
    || ' ' || (SELECT md5(string_agg(t::text, ';' ORDER BY t.stream)) FROM p_totals t)
    || ' ' || (SELECT md5(string_agg(t::text, ';' ORDER BY t.stream)) FROM q_totals t)
    || ' ' || (SELECT string_agg(name || '@' || "position" || ':' || state, ' ' ORDER BY name)
                 FROM cqrs.projections)
};
my $verify_sql = q{
SELECT string_agg(format('%s %s/%s %s', table_name, "rows", expected_rows, matches), ', '
                   ORDER BY table_name::text)
  FROM (SELECT * FROM cqrs.verify('p') UNION ALL SELECT * FROM cqrs.verify('q')) v
};
my $state = $node->safe_psql('postgres', $state_sql);
my $verified = $node->safe_psql('postgres', $verify_sql);
like($verified, qr/^p_applied 5000\/5000 t, p_totals 40\/40 t, q_totals 40\/40 t$/,
	'verify matches before the crash');

# A replay of $name started in the background and stopped at the gate;
# returns its session and its backend's pid.  (One projection at a time: a
# deferred projection's replay waits for a sync one's, whose ShareLock on
# cqrs.projections it conflicts with.)
sub replay_in_the_middle
{
	my ($name, $blocker) = @_;

	$blocker->query_safe('SELECT pg_advisory_lock(1)');
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_until(qr/replaying/,
		"\\echo replaying\nBEGIN;\nSELECT cqrs.replay('$name');\n");
	ok( $node->poll_query_until(
			'postgres', qq{
	SELECT wait_event_type = 'Lock' AND wait_event = 'advisory'
	  FROM pg_stat_activity WHERE pid = $pid}),
		"the replay of $name waits at the gate in the middle of the log");
	is($node->safe_psql('postgres', $state_sql),
		$state, "readers see the old contents during the replay of $name");
	return ($bg, $pid);
}

# After the crash: nothing of the replay is left.
sub check_intact
{
	my ($how) = @_;
	is($node->safe_psql('postgres', $state_sql),
		$state, "$how: old read tables and checkpoints intact");
	is($node->safe_psql('postgres', $verify_sql),
		$verified, "$how: verify still matches");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
		'0', "$how: the read tables still hold the log");
}

foreach my $name ('p', 'q')
{
	# SIGKILL of the replaying backend: the postmaster kills every
	# backend, reinitialises and recovers from WAL
	my $blocker = $node->background_psql('postgres');
	my ($bg, $pid) = replay_in_the_middle($name, $blocker);
	my $offset = -s $node->logfile;
	kill 'KILL', $pid;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
	eval { $_->quit } foreach ($bg, $blocker);
	check_intact("$name, after SIGKILL");

	# immediate shutdown (no shutdown checkpoint), then recovery from WAL
	$blocker = $node->background_psql('postgres');
	($bg, $pid) = replay_in_the_middle($name, $blocker);
	$node->stop('immediate');
	eval { $_->quit } foreach ($bg, $blocker);
	$node->start;
	check_intact("$name, after immediate shutdown");
}

# ------------------------------------------------------------------------
# A replay after the restart works

is($node->safe_psql('postgres', q{SELECT cqrs.replay('p') || ' ' || cqrs.replay('q')}),
	"$events $events", 'replays after the restart apply every event');
is($node->safe_psql('postgres', $state_sql),
	$state, 'the rebuilt tables equal the old ones, at the same checkpoints');
is($node->safe_psql('postgres', $verify_sql), $verified, 'verify matches after the replays');
is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
	'0', 'the rebuilt tables hold the log');

# and the projections go on
$node->safe_psql('postgres',
	q{SELECT cqrs.append('s-new', 'T', jsonb_build_object('amount', 3))});
$node->safe_psql('postgres', q{SELECT cqrs.process_projections('q')});
ok( $node->poll_query_until(
		'postgres', q{
	SELECT "position" = (SELECT max("position") FROM cqrs.events)
	  FROM cqrs.projections WHERE name = 'q'}),
	'the deferred projection applies a new event');
is($node->safe_psql('postgres', 'SELECT count(*) FROM problems'),
	'0', 'a new event is applied to the rebuilt tables');
like($node->safe_psql('postgres', $verify_sql),
	qr/^p_applied 5001\/5001 t, p_totals 41\/41 t, q_totals 41\/41 t$/,
	'verify matches after a new event');

$node->stop;
done_testing();
