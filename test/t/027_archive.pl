# test/t/027_archive.pl - archiving (0.8.0) across crashes, pg_dump /
# pg_restore and a detached partition
#
# 80,000 events in 4,000 "acct" streams of 20, plus 2,000 of another
# category, imported with cqrs.import_events; a copy of the log is kept in a
# table of the test.  An archive rule keeps the last 2 events of each "acct"
# stream and moves the other 72,000 to cqrs.events_archive.  After every
# crash below, and at the end, the log and the archive together hold exactly
# the original events (same positions, same rows: nothing lost, nothing
# twice), every stream's head is in the log with stream_version unchanged,
# and the audit rows (operation 'archive', per partition) count exactly the
# rows of the archive, as does the rule's "removed".
#
# 1. apply_retention of the whole rule in one transaction, its backend
#    killed with SIGKILL while it runs (the postmaster restarts the
#    cluster): everything or nothing.
# 2. The worker (cqrs.retention_batch_size = 200, a transaction per batch)
#    stopped with "immediate" once some batches have committed, restarted
#    with its passes off: the committed batches are there, the others not.
# 3. The passes on again: the worker is killed with SIGKILL in the middle,
#    comes back by itself, and finishes the rule: every "acct" stream holds
#    versions 19 and 20 in the log and 1..18 in the archive.
# 4. pg_dump -Fc and pg_restore into a new database, without an error
#    (and so also with --single-transaction, which stops at the first): the
#    partitions come back with their rows and indexes, the archive keeps
#    row-level security, the rule keeps archive = true, and archiving
#    continues there.
# 5. The current month's partition detached (kept under its name): the next
#    batch creates a new partition with the suffix _2 and moves into it; the
#    detached table keeps its rows.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;

my $streams = 4000;
my $per_stream = 20;
my $total = $streams * $per_stream;
my $to_move = $streams * ($per_stream - 2);
my $others = 2000;

# PostgreSQL::Test::Cluster turns restart_after_crash off; the SIGKILLs need it
my $node = cqrs_node('archive',
	'restart_after_crash = on',
	'cqrs.retention_batch_size = 200',
	'cqrs.retention_naptime = 0');
cqrs_import_accounts($node, $streams, $per_stream, $others);
$node->safe_psql('postgres', 'CREATE TABLE original AS SELECT * FROM cqrs.events');
is($node->safe_psql('postgres', 'SELECT count(*) FROM original'),
	$total + $others, 'the log holds every imported event');

my $cols = q{"position", stream, version, id, type, data, metadata, recorded_at};

# Everything that must hold whenever no archive transaction is open.
sub check_invariants
{
	my ($db, $when) = @_;
	is( $node->safe_psql(
			$db, qq{
SELECT (SELECT count(*) FROM (
          TABLE original
          EXCEPT ALL
          (SELECT $cols FROM cqrs.events UNION ALL SELECT $cols FROM cqrs.events_archive)) m)
  || ' missing, ' ||
       (SELECT count(*) FROM (
          (SELECT $cols FROM cqrs.events UNION ALL SELECT $cols FROM cqrs.events_archive)
          EXCEPT ALL
          TABLE original) x)
  || ' extra'}),
		'0 missing, 0 extra',
		"$when: log and archive hold exactly the original events");
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FROM (SELECT "position" FROM cqrs.events_archive
                       INTERSECT SELECT "position" FROM cqrs.events) b}),
		'0', "$when: no event is both in the log and in the archive");
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FROM (
  SELECT o.stream, max(o.version) AS head FROM original o GROUP BY o.stream) h
 WHERE EXISTS (SELECT FROM cqrs.events e WHERE e.stream = h.stream AND e.version = h.head)
   AND NOT EXISTS (SELECT FROM cqrs.events_archive a WHERE a.stream = h.stream AND a.version = h.head)
   AND cqrs.stream_version(h.stream) = h.head}),
		$streams + 100, "$when: every stream's head is in the log, stream_version unchanged");
	is($node->safe_psql($db, q{SELECT count(*) FROM cqrs.events WHERE stream LIKE 'other-%'}),
		$others, "$when: the other category is whole");
	is( $node->safe_psql(
			$db, q{
WITH h AS (SELECT stream, max(version) AS head FROM original GROUP BY stream)
SELECT count(*) FROM cqrs.events_archive a LEFT JOIN h USING (stream)
 WHERE a.stream NOT LIKE 'acct-%' OR a.version > h.head - 2}),
		'0', "$when: only what the rule says was moved");
	# one statement, one snapshot: the worker may be running
	my ($audited, $rows, $removed, $retention) = split / /, $node->safe_psql(
		$db, q{
SELECT (SELECT coalesce(sum(events), 0) FROM cqrs.lifecycle_log WHERE operation = 'archive')
       || ' ' || (SELECT count(*) FROM cqrs.events_archive)
       || ' ' || (SELECT coalesce(sum(removed), 0) FROM cqrs.retention_rules)
       || ' ' || (SELECT count(*) FROM cqrs.lifecycle_log WHERE operation = 'retention')});
	is("$audited $removed $retention", "$rows $rows 0",
		"$when: the audit rows and the rule count exactly the $rows archived rows, none as 'retention'");
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FROM (
  SELECT tableoid::regclass::text AS part, count(*) AS n FROM cqrs.events_archive GROUP BY 1
  EXCEPT ALL
  SELECT 'cqrs.' || regexp_replace(detail->>'partition', '^cqrs\.', ''), sum(events)
    FROM cqrs.lifecycle_log
   WHERE operation = 'archive' GROUP BY 1) d}),
		'0', "$when: each partition holds what the audit rows naming it count");
	return;
}

sub archived
{
	my ($db) = @_;
	return $node->safe_psql($db || 'postgres', 'SELECT count(*) FROM cqrs.events_archive');
}

$node->safe_psql('postgres',
	q{SELECT cqrs.set_retention('acct', max_count => 2, archive => true)});
is( $node->safe_psql('postgres',
		q{SELECT archive || ' ' || removed FROM cqrs.retention_rules WHERE category = 'acct'}),
	'true 0', 'an archive rule, the worker\'s passes off');

# --- 1. one big apply_retention, its backend killed in the middle: a
# session holds a row lock on an event half-way up the log, so the pass,
# having moved the batches below it in its transaction, waits there
my ($lout, $lerr) = ('', '');
my $locker = IPC::Run::start(
	[
		'psql', '-X', '-A', '-t', '-q',
		'-d', $node->connstr('postgres') . ' application_name=locker',
		'-c', 'BEGIN',
		'-c', q{SELECT version FROM cqrs.events WHERE stream = 'acct-5' AND version = 10 FOR UPDATE},
		'-c', 'SELECT pg_sleep(600)'
	],
	'>', \$lout, '2>', \$lerr);
$node->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_stat_activity
	 WHERE application_name = 'locker' AND query LIKE '%pg_sleep%'})
  or die 'the locker did not take its lock';
my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[
		'psql', '-X', '-A', '-t', '-q',
		'-d', $node->connstr('postgres') . ' application_name=archiver',
		'-c', q{SELECT cqrs.apply_retention('acct')}
	],
	'>', \$out, '2>', \$err);
my $waiting = $node->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_stat_activity
	 WHERE application_name = 'archiver' AND wait_event_type = 'Lock'});
ok($waiting, 'the archive pass waits on the locked event, half-way');
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'archiver' AND state = 'active'});
my $killed = $pid =~ /^\d+$/ && kill('KILL', $pid);
ok($killed, "SIGKILL the archiving backend in the middle of its pass")
  or diag "the archive pass: $out / $err";
$h->finish;
# without the crash the locker would sleep on, holding its lock
$node->psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'})
  unless $killed;
$locker->finish;
# the postmaster restarts the cluster after a backend's SIGKILL
$node->poll_query_until('postgres', 'SELECT true') or die 'the server did not come back';
is(archived(), 0, 'nothing was archived: the pass was one transaction');
check_invariants('postgres', 'after the killed pass');
is($node->safe_psql('postgres', q{SELECT removed || ' ' || scan_position FROM cqrs.retention_rules}),
	'0 0', 'the rule counts nothing and is where it was');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM pg_inherits WHERE inhparent = 'cqrs.events_archive'::regclass}),
	'0', 'and the partition the pass created went with it');

# --- 2. the worker, stopped with "immediate" in the middle of its pass
$node->safe_psql('postgres', q{ALTER SYSTEM SET cqrs.retention_naptime = '200ms'});
$node->reload;
$node->safe_psql('postgres',
	q{SELECT cqrs.set_retention('acct', max_count => 2, archive => true)});
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 3 FROM cqrs.lifecycle_log WHERE operation = 'archive'})
  or die 'the worker ran no archive batch';
# off after the restart: postgresql.auto.conf is read at start
$node->safe_psql('postgres', q{ALTER SYSTEM SET cqrs.retention_naptime = 0});
$node->stop('immediate');
$node->start;

my $gone = archived();
ok($gone > 0, "some batches committed before the stop ($gone events archived)");
ok($gone < $to_move, 'the pass had not finished');
check_invariants('postgres', 'after the immediate stop');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM cqrs.events e
 WHERE e.stream LIKE 'acct-%'
   AND e.version <= 18
   AND e.position <= (SELECT scan_position FROM cqrs.retention_rules)
   AND EXISTS (SELECT FROM cqrs.events h WHERE h.stream = e.stream AND h.version = e.version + 2
                  AND h.position <= (SELECT scan_position FROM cqrs.retention_rules))}),
	0, 'below the rule\'s stored position, nothing it should have moved is left in the log');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM cqrs.lifecycle_log
 WHERE operation = 'archive'
   AND (coalesce(detail->'rule'->>'archive', detail->>'archive') IS DISTINCT FROM 'true' OR detail->>'partition' IS NULL
        OR (detail->>'first_position')::bigint > (detail->>'last_position')::bigint)}),
	'0', 'every audit row names the rule as an archive rule, a partition and its positions');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM cqrs.lifecycle_log l
 WHERE operation = 'archive'
   AND (SELECT count(*) FROM cqrs.events_archive a
         WHERE a."position" BETWEEN (l.detail->>'first_position')::bigint
                                AND (l.detail->>'last_position')::bigint) < l.events}),
	'0', 'each audit row\'s positions span the rows it counts');

# --- 3. the passes on again; the worker killed in the middle, and finishing
# (the passes still off: nothing moves the rule's place but set_retention)
my $place = $node->safe_psql('postgres', 'SELECT scan_position FROM cqrs.retention_rules');
$node->safe_psql('postgres',
	q{SELECT cqrs.set_retention('acct', max_count => 2, archive => true)});
is($node->safe_psql('postgres', 'SELECT scan_position FROM cqrs.retention_rules'),
	$place, 'setting the same rule again keeps its place');
$node->safe_psql('postgres', q{ALTER SYSTEM SET cqrs.retention_naptime = '200ms'});
$node->reload;
# and wakes the database's worker
$node->safe_psql('postgres',
	q{SELECT cqrs.set_retention('acct', max_count => 2, archive => true)});
$node->poll_query_until('postgres',
	qq{SELECT count(*) >= $gone + 1000 FROM cqrs.events_archive})
  or die 'the worker did not resume';
$pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker' AND datname = 'postgres'});
my $before_kill = archived();
if ($before_kill < $to_move && $pid =~ /^\d+$/)
{
	ok(kill('KILL', $pid), "SIGKILL the worker (pid $pid) with $before_kill archived");
	$node->poll_query_until(
		'postgres', qq{
		SELECT EXISTS (SELECT FROM pg_stat_activity
		                WHERE backend_type = 'pg_cqrs worker' AND pid <> $pid)})
	  or die 'no worker after the restart';
	check_invariants('postgres', 'after the worker\'s SIGKILL');
}
else
{
	note "the worker finished before it could be killed ($before_kill archived)";
}
# a new worker comes back by itself (the database has a rule) and finishes
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) = $streams * 2 FROM cqrs.events WHERE stream LIKE 'acct-%'}),
	'the worker resumed and finished the rule');
$node->safe_psql('postgres', q{ALTER SYSTEM SET cqrs.retention_naptime = 0});
$node->reload;
check_invariants('postgres', 'at the end of the pass');
is(archived(), $to_move, 'every event the rule names was archived');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT e.stream FROM cqrs.events e WHERE e.stream LIKE 'acct-%' GROUP BY e.stream
  HAVING array_agg(e.version ORDER BY e.version) = '{19,20}'
     AND (SELECT array_agg(a.version ORDER BY a.version) FROM cqrs.events_archive a
           WHERE a.stream = e.stream) = (SELECT array_agg(v) FROM generate_series(1::bigint, 18) v)) s}),
	$streams, 'every stream holds versions 19 and 20 in the log, 1 to 18 in the archive');
is( $node->safe_psql('postgres', q{
SELECT count(DISTINCT performed_by) || ' ' || min(performed_by)
  FROM cqrs.lifecycle_log WHERE operation = 'archive'}),
	'1 ' . $node->safe_psql('postgres',
		q{SELECT tableowner FROM pg_tables WHERE tablename = 'events' AND schemaname = 'cqrs'}),
	'the worker archived as the log\'s owner');
like(slurp_file($node->logfile),
	qr/background worker "pg_cqrs worker" \(PID \d+\) was terminated by signal 9/,
	'the server log shows the worker was killed')
  if $before_kill < $to_move;
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM cqrs.events_archive
 WHERE archived_at IS NULL OR archived_at < recorded_at
    OR tableoid::regclass::text
       NOT LIKE 'cqrs.events_archive_' || to_char(archived_at AT TIME ZONE 'UTC', 'YYYY_MM') || '%'}),
	'0', 'every archived row is in the partition of its archived_at\'s UTC month');
is($node->safe_psql('postgres', q{SELECT version FROM cqrs.append('acct-7', 'Deposited', '{}')}),
	21, 'an append continues the stream at version 21');
$node->safe_psql('postgres', q{INSERT INTO original
	SELECT * FROM cqrs.events WHERE stream = 'acct-7' AND version = 21});

# --- 4. pg_dump and pg_restore
my $partitions = q{
SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || c.relrowsecurity::text || ':' ||
                  (SELECT string_agg((pg_get_indexdef(x.indexrelid) ~ '\(("position"|stream, version)\)$'
                                      AND x.indisvalid)::text, '/')
                     FROM pg_index x WHERE x.indrelid = c.oid),
                  ',' ORDER BY c.relname)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'cqrs.events_archive'::regclass};
my $archive_rows = qq{
SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', $cols, archived_at, tableoid::regclass), ','
                                          ORDER BY "position"))
  FROM cqrs.events_archive};
my $parts_before = $node->safe_psql('postgres', $partitions);
like($parts_before, qr/^events_archive_\d{4}_\d\d:r:true:true\/true(,|$)/,
	"the archive's partitions, with row-level security on and their two indexes (position; stream, version): $parts_before");
my $dump = $node->basedir . '/archive.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE target');
# pg_restore exits non-zero if any statement failed
$node->command_ok([ 'pg_restore', '-d', $node->connstr('target'), $dump ],
	'pg_restore without an error');
# and so a restore in one transaction, which stops at the first error
$node->safe_psql('postgres', 'CREATE DATABASE target_one');
$node->command_ok([ 'pg_restore', '--single-transaction', '-d', $node->connstr('target_one'), $dump ],
	'pg_restore --single-transaction succeeds');
my (undef, $restored_one) = $node->psql('target_one', 'SELECT count(*) FROM cqrs.events_archive');
is($restored_one, $to_move, 'and restores the archive\'s rows');
is($node->safe_psql('target', $partitions), $parts_before,
	'the restored archive has the same partitions, attached, row-level security on, with their indexes');
is($node->safe_psql('target', $archive_rows), $node->safe_psql('postgres', $archive_rows),
	'and the same rows in the same partitions');
is( $node->safe_psql('target', q{
SELECT c.relrowsecurity || ' ' || (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid)
  FROM pg_class c WHERE c.oid = 'cqrs.events_archive'::regclass}),
	'true 0', 'the restored archive has row-level security on, no policy');
is( $node->safe_psql('target', q{
SELECT string_agg(category || ':' || max_count || ':' || archive || ':' || removed, ',')
  FROM cqrs.retention_rules}),
	"acct:2:true:$to_move", 'the rule is restored as an archive rule, with its count');
check_invariants('target', 'after the restore');
# archiving goes on in the restored database
$node->safe_psql('target', q{
SELECT count(*) FROM generate_series(1, 3) i,
  LATERAL cqrs.append('acct-9', 'Deposited', jsonb_build_object('after_restore', i));
INSERT INTO original SELECT * FROM cqrs.events WHERE stream = 'acct-9' AND version > 20;
});
is($node->safe_psql('target', q{SELECT cqrs.apply_retention('acct')}), 4,
	'archiving continues after the restore');
is( $node->safe_psql('target', q{
SELECT string_agg(version::text, ',' ORDER BY version) FROM cqrs.events WHERE stream = 'acct-9'}),
	'22,23', 'the stream keeps its last 2 events');
check_invariants('target', 'after archiving in the restored database');

# --- 5. the current month's partition detached, kept under its name
my $current = $node->safe_psql('postgres', q{
SELECT 'events_archive_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')});
my $held = $node->safe_psql('postgres', qq{SELECT count(*) FROM cqrs.$current});
cmp_ok($held, '>', 0, "$current holds this month's archived rows ($held)");
$node->safe_psql('postgres', qq{ALTER TABLE cqrs.events_archive DETACH PARTITION cqrs.$current});
$node->safe_psql('postgres', q{
SELECT count(*) FROM generate_series(1, 3) i,
  LATERAL cqrs.append('acct-8', 'Deposited', jsonb_build_object('after_detach', i));
});
is($node->safe_psql('postgres', q{SELECT cqrs.apply_retention('acct')}), 4,
	'the next batch after the detach archives (acct-7\'s 19, acct-8\'s 19..21)');
is($node->safe_psql('postgres', $partitions) =~ /\b${current}_2:r:true:true\/true\b/ ? 1 : 0, 1,
	"a new partition ${current}_2 was created, with its indexes");
is( $node->safe_psql('postgres', q{
SELECT tableoid::regclass || ':' || count(*) FROM cqrs.events_archive GROUP BY tableoid}),
	"cqrs.${current}_2:4", 'the attached archive now holds only the new batch, in it');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM cqrs.$current}), $held,
	'the detached table keeps its rows');
is( $node->safe_psql('postgres', q{
SELECT regexp_replace(detail->>'partition', '^cqrs\.', '')
  FROM cqrs.lifecycle_log WHERE operation = 'archive' ORDER BY id DESC LIMIT 1}),
	"${current}_2", 'the audit row names the new partition');
is( $node->safe_psql('postgres', qq{
SELECT count(*) FROM (
  SELECT $cols FROM cqrs.events UNION ALL SELECT $cols FROM cqrs.events_archive
  UNION ALL SELECT $cols FROM cqrs.$current) u}),
	$node->safe_psql('postgres', q{SELECT count(*) FROM original}) + 3, 'log, archive and detached table hold every event once');

$node->stop;
done_testing();
