# test/t/004_projection_restart.pl - deferred projections across restarts,
# and the launcher's view of databases
#
#   - An immediate shutdown (no shutdown checkpoint: the state comes back
#     from WAL replay) while the worker is in the middle of a backlog, with a
#     second projection paused on a backlog of its own.  After the restart
#     the worker resumes from the last committed checkpoint and catches up,
#     the paused projection stays paused until resumed, and every event has
#     taken effect exactly once: the read tables equal a replay of the log
#     (EXCEPT ALL both ways, as pg_ivm's check_mv() does).
#   - The launcher serves databases created after start-up: in a new
#     database, CREATE EXTENSION and a deferred projection, and an event is
#     applied within a few seconds.  In a database whose worker has left
#     (the extension is there but no deferred projection runs), creating one
#     brings a worker back just as fast.
#   - A worker leaves a database with no running deferred projection, so
#     such a database can be dropped without FORCE: one where the extension
#     was never given a projection, and one whose deferred projection was
#     dropped or paused.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use Time::HiRes qw(time);

my $events = 6000;
my $paused_events = 1000;

my $node = cqrs_node('projection_restart',
	q{cqrs.batch_size = 500});

# A projection's read table, a handler (sleeping a little when asked to),
# and a view listing every difference from a replay of the log.
sub setup_projection
{
	my ($db, $name, $sleep) = @_;
	$node->safe_psql(
		$db, qq{
CREATE TABLE ${name}_applied ("position" bigint PRIMARY KEY, stream text NOT NULL,
                              version bigint NOT NULL, times int NOT NULL DEFAULT 1);
CREATE TABLE ${name}_totals (stream text PRIMARY KEY, events bigint NOT NULL,
                             amount bigint NOT NULL);
CREATE FUNCTION ${name}_handler(e cqrs.events) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
  PERFORM pg_sleep($sleep);
  INSERT INTO ${name}_applied ("position", stream, version)
  VALUES (e."position", e.stream, e.version)
  ON CONFLICT ("position") DO UPDATE SET times = ${name}_applied.times + 1;
  INSERT INTO ${name}_totals VALUES (e.stream, 1, (e.data->>'amount')::bigint)
  ON CONFLICT (stream) DO UPDATE
    SET events = ${name}_totals.events + 1, amount = ${name}_totals.amount + excluded.amount;
END \$\$;
CREATE VIEW ${name}_problems AS
  WITH want_applied AS (SELECT "position", stream, version, 1 AS times FROM cqrs.events),
  got_applied AS (SELECT "position", stream, version, times FROM ${name}_applied),
  want_totals AS (SELECT stream, count(*) AS events, sum((data->>'amount')::bigint) AS amount
                    FROM cqrs.events GROUP BY stream),
  got_totals AS (SELECT stream, events, amount FROM ${name}_totals)
  SELECT 'applied: missing' AS problem, w::text AS item
    FROM (SELECT * FROM want_applied EXCEPT ALL SELECT * FROM got_applied) w
  UNION ALL
  SELECT 'applied: extra', g::text FROM (SELECT * FROM got_applied EXCEPT ALL SELECT * FROM want_applied) g
  UNION ALL
  SELECT 'totals: missing', w::text FROM (SELECT * FROM want_totals EXCEPT ALL SELECT * FROM got_totals) w
  UNION ALL
  SELECT 'totals: extra', g::text FROM (SELECT * FROM got_totals EXCEPT ALL SELECT * FROM want_totals) g;
});
}

sub append_events
{
	my ($db, $n) = @_;
	return $node->safe_psql($db,
		"SELECT max(position) FROM (SELECT (cqrs.append('s-' || (i % 16), 'T', "
		  . "jsonb_build_object('amount', i % 5))).position FROM generate_series(1, $n) i) x");
}

sub position_of
{
	my ($db, $name) = @_;
	return $node->safe_psql($db,
		"SELECT \"position\" FROM cqrs.projection_status WHERE name = '$name'");
}

sub worker_in
{
	my ($db) = @_;
	return qq{SELECT EXISTS (SELECT FROM pg_stat_activity
	                          WHERE backend_type = 'pg_cqrs worker' AND datname = '$db')};
}

# ------------------------------------------------------------------------
# Immediate shutdown with a backlog

$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
setup_projection('postgres', 'p', '0.0005');
setup_projection('postgres', 'q', '0');
$node->safe_psql('postgres',
	q{SELECT cqrs.create_projection('q', 'q_handler', 'deferred', '{q_applied,q_totals}')});
$node->safe_psql('postgres', q{SELECT cqrs.pause_projection('q')});
my $head = append_events('postgres', $events);
$node->safe_psql('postgres',
	q{SELECT cqrs.create_projection('p', 'p_handler', 'deferred', '{p_applied,p_totals}')});

ok( $node->poll_query_until(
		'postgres', qq{
	SELECT (SELECT "position" FROM cqrs.projection_status WHERE name = 'p') >= $events / 3
	   AND EXISTS (SELECT FROM pg_stat_activity
	                WHERE backend_type = 'pg_cqrs worker' AND wait_event = 'PgSleep')}),
	'the worker is in the middle of the backlog');
my $before = position_of('postgres', 'p');
cmp_ok($before, '<', $head, 'the worker has not caught up before the shutdown');
is($node->safe_psql('postgres', 'SELECT count(*) FROM q_applied'),
	'0', 'the paused projection has applied nothing');

$node->stop('immediate');
$node->start;

cmp_ok(position_of('postgres', 'p'), '>=', $before,
	'the checkpoint survived the immediate shutdown');
ok($node->poll_query_until('postgres', "SELECT (" . q{SELECT "position" FROM cqrs.projection_status WHERE name = 'p'} . ") = $head"),
	'the worker resumes after the restart and catches up');
is($node->safe_psql('postgres', 'SELECT count(*) FROM p_applied WHERE times <> 1'),
	'0', 'no event was applied twice');
is($node->safe_psql('postgres', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM p_problems}),
	'', 'the read tables equal a replay of the log');

is($node->safe_psql('postgres', q{SELECT state FROM cqrs.projection_status WHERE name = 'q'}),
	'paused', 'the paused projection is still paused after the restart');
is($node->safe_psql('postgres', 'SELECT count(*) FROM q_applied'),
	'0', 'the paused projection still has applied nothing');
$node->safe_psql('postgres', q{SELECT cqrs.resume_projection('q')});
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('q', $head, '60 s')"),
	't', 'once resumed, it catches up');
is($node->safe_psql('postgres', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM q_problems}),
	'', 'its read tables equal a replay of the log');

# The same with a paused projection whose backlog grew before the crash:
# pause, append, immediate shutdown, restart, resume.
$node->safe_psql('postgres', q{SELECT cqrs.pause_projection('q')});
$head = append_events('postgres', $paused_events);
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM q_applied'),
	$events, 'the paused projection applied nothing past its pause');
$node->safe_psql('postgres', q{SELECT cqrs.resume_projection('q')});
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('q', $head, '60 s')"),
	't', 'resumed after the restart, it catches up');
is($node->safe_psql('postgres', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM q_problems}),
	'', 'its read tables equal a replay of the log');
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('p', $head, '60 s')"),
	't', 'the other projection applied the new events too');
is($node->safe_psql('postgres', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM p_problems}),
	'', 'and its read tables equal a replay of the log');

# ------------------------------------------------------------------------
# Databases created after start-up

$node->safe_psql('postgres', 'CREATE DATABASE late');
$node->safe_psql('late', 'CREATE EXTENSION pg_cqrs');
setup_projection('late', 'l', '0');
$node->safe_psql('late',
	q{SELECT cqrs.create_projection('l', 'l_handler', 'deferred', '{l_applied,l_totals}')});
my $start = time();
my $pos = append_events('late', 1);
is($node->safe_psql('late', "SELECT cqrs.wait_for_projection('l', $pos, '5 s')"),
	't', 'a database created after start-up: its event is applied within 5 s');
note sprintf('applied after %.2f s', time() - $start);
is($node->safe_psql('late', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM l_problems}),
	'', 'and its read tables equal a replay of the log');

# A database where the extension is installed with no deferred projection:
# its worker (started when the extension was created) leaves.
$node->safe_psql('postgres', 'CREATE DATABASE idle');
$node->safe_psql('idle', 'CREATE EXTENSION pg_cqrs');
append_events('idle', 10);
ok($node->poll_query_until('idle', worker_in('idle'), 'f'),
	'no worker stays in a database without deferred projections');
setup_projection('idle', 'i', '0');
$node->safe_psql('idle',
	q{SELECT cqrs.create_projection('i', 'i_handler', 'deferred', '{i_applied,i_totals}')});
$start = time();
$pos = append_events('idle', 1);
is($node->safe_psql('idle', "SELECT cqrs.wait_for_projection('i', $pos, '5 s')"),
	't', 'a deferred projection created there later is served within 5 s');
note sprintf('applied after %.2f s', time() - $start);
is($node->safe_psql('idle', q{SELECT string_agg(problem || ' ' || item, E'\n') FROM i_problems}),
	'', 'it caught up on the history too, exactly once');

# ------------------------------------------------------------------------
# DROP DATABASE without FORCE

# The extension, never a projection.
$node->safe_psql('postgres', 'CREATE DATABASE bare');
$node->safe_psql('bare', 'CREATE EXTENSION pg_cqrs');
append_events('bare', 3);
ok($node->poll_query_until('postgres', worker_in('bare'), 'f'),
	'no worker stays in a database with the extension but no projection');
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE bare');
is($ret, 0, 'it can be dropped without FORCE') or diag $err;

# A deferred projection that was dropped: the worker leaves.
ok($node->poll_query_until('postgres', worker_in('idle')),
	'a worker serves the database with a running deferred projection');
$node->safe_psql('idle', q{SELECT cqrs.drop_projection('i')});
ok($node->poll_query_until('postgres', worker_in('idle'), 'f'),
	'the worker leaves once its deferred projection is dropped');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE idle');
is($ret, 0, 'the database can then be dropped without FORCE') or diag $err;

# A deferred projection that was paused: the worker leaves too.
ok($node->poll_query_until('postgres', worker_in('late')),
	'a worker serves the other new database');
$node->safe_psql('late', q{SELECT cqrs.pause_projection('l')});
ok($node->poll_query_until('postgres', worker_in('late'), 'f'),
	'the worker leaves once its deferred projection is paused');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE late');
is($ret, 0, 'that database can be dropped without FORCE too') or diag $err;

# The first database's worker was not disturbed.
$pos = append_events('postgres', 1);
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('p', $pos, '5 s')"),
	't', 'the first database is still served');

$node->stop;
done_testing();
