# test/t/023_lifecycle_crash_dump.pl - stream lifecycle operations (0.7.0)
# across crashes and pg_dump / pg_restore
#
# 1. Committed operations survive an immediate stop: a hard delete, a soft
#    delete, a truncation and an erasure, committed before the stop, are
#    all there after WAL replay (tombstones, removed rows, erased data,
#    audit rows), and appends to the deleted streams are still refused.
# 2. Everything or nothing: a hard delete and an erasure of two large
#    streams (100,000 events each) run in one transaction that is still
#    open when the server is stopped with "immediate"; after recovery both
#    streams are exactly as before (same rows, same data), with no
#    tombstone, no system event and no audit row, and take appends again.
#    Then the same hard delete runs alone, in autocommit, and the server is
#    stopped while it runs (or just after): the stream is afterwards either
#    whole or reduced to its tombstone with its audit row, never between.
# 3. pg_dump -Fc and pg_restore into a new database keep the tombstones,
#    the truncated and erased streams, and the audit trail (a configuration
#    table of the extension, with its identity sequence); appends to the
#    deleted streams are refused there too, read_stream shows them as their
#    tombstone, and new lifecycle operations audit under new ids.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;
use Time::HiRes qw(time);

my $big = 100_000;

my $node = cqrs_node('lifecycle_crash');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');

# small streams for part 1, two large ones for part 2
$node->safe_psql(
	'postgres', qq{
SELECT count(*) FROM generate_series(1, 5) s, generate_series(1, 4) v,
       LATERAL cqrs.append('p-' || s, 'Happened', jsonb_build_object('v', v, 'name', 'n' || s)) a;
CREATE TABLE staging (n bigint PRIMARY KEY, stream text, data jsonb);
INSERT INTO staging
SELECT g, 'big-' || (g % 2), jsonb_build_object('g', g, 'pad', repeat(md5(g::text), 8))
  FROM generate_series(1, 2 * $big) g;
SELECT cqrs.import_events(stream, 'Big', data, NULL, NULL ORDER BY n) FROM staging;
});

# --- 1. committed operations survive the crash
$node->safe_psql(
	'postgres', q{
SELECT cqrs.delete_stream('p-1', hard => true);
SELECT cqrs.delete_stream('p-2');
SELECT cqrs.truncate_stream('p-3', 3);
SELECT cqrs.erase_stream('p-4', 2, 3);
});
my $committed = q{
SELECT string_agg(stream || ':' || version || ':' || type || ':' || data::text, ' ' ORDER BY position)
  FROM cqrs.events WHERE stream IN ('p-1', 'p-2', 'p-3', 'p-4')};
my $audit = q{SELECT string_agg(id || ':' || operation || ':' || target || ':' || events, ' ' ORDER BY id)
  FROM cqrs.lifecycle_log};
my $log_before = $node->safe_psql('postgres', $committed);
my $audit_before = $node->safe_psql('postgres', $audit);
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', $committed), $log_before,
	'committed deletes, truncation and erasure are all there after recovery');
is($node->safe_psql('postgres', $audit_before ne '' ? $audit : 'SELECT 1'), $audit_before,
	'and so are their audit rows');
like($audit_before, qr/delete_stream:p-1:4 .*delete_stream:p-2:0 .*truncate_stream:p-3:2 .*erase_stream:p-4:2/,
	'four audit rows, as expected');
for my $s ('p-1', 'p-2')
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT cqrs.append('$s', 'Late', '{}')", extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/55000/, "an append to deleted stream $s is refused after recovery");
}

# --- 2. an open transaction with a large hard delete and erasure: nothing
my $bigstate = q{
SELECT stream, count(*), max(version), md5(string_agg(data::text, '' ORDER BY version)),
       count(*) FILTER (WHERE type LIKE '$%')
  FROM cqrs.events WHERE stream LIKE 'big-%' GROUP BY stream ORDER BY stream};
my $big_before = $node->safe_psql('postgres', $bigstate);
my $audit_count = $node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.lifecycle_log');
like($big_before, qr/^big-0\|$big\|$big\|\w+\|0\nbig-1\|$big\|$big\|\w+\|0$/,
	'two streams of 100,000 events');

my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[
		'psql', '-X', '-A', '-t', '-q',
		'-d', $node->connstr('postgres') . ' application_name=lifecycler',
		'-c', 'BEGIN',
		'-c', q{SELECT cqrs.delete_stream('big-0', hard => true) > 0},
		'-c', q{SELECT cqrs.erase_stream('big-1')},
		'-c', 'SELECT pg_sleep(600)'
	],
	'>', \$out, '2>', \$err);
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity
		   WHERE application_name = 'lifecycler' AND query LIKE '%pg_sleep%'}),
	'the delete and the erasure ran, their transaction is open');
$node->stop('immediate');
$h->finish;
like($out, qr/^t\n$big\n$/, 'the delete and the erasure had done their work')
  or diag "lifecycler: $out / $err";
$node->start;
is($node->safe_psql('postgres', $bigstate), $big_before,
	'after recovery both streams are exactly as before');
is($node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.lifecycle_log'), $audit_count,
	'no audit row of the lost transaction');
is( $node->safe_psql('postgres',
		q{SELECT version FROM cqrs.append('big-0', 'After', '{}', expected_version => 100000)}),
	$big + 1, 'the stream takes appends again');

# the hard delete alone, in autocommit, stopped while it runs or just after
($out, $err) = ('', '');
$h = IPC::Run::start(
	[
		'psql', '-X', '-A', '-t', '-q',
		'-d', $node->connstr('postgres') . ' application_name=deleter',
		'-c', q{SELECT cqrs.delete_stream('big-1', hard => true) > 0}
	],
	'>', \$out, '2>', \$err);
$node->poll_query_until(
	'postgres', q{
	SELECT coalesce(bool_and(state <> 'active' OR now() - query_start > interval '200 ms'), true)
	  FROM pg_stat_activity WHERE application_name = 'deleter'})
  or diag 'the delete has not been running for 200 ms';
$node->stop('immediate');
$h->finish;
$node->start;
my $after = $node->safe_psql(
	'postgres', q{
SELECT count(*), string_agg(DISTINCT type, ','),
       (SELECT count(*) FROM cqrs.lifecycle_log WHERE target = 'big-1' AND operation = 'delete_stream')
  FROM cqrs.events WHERE stream = 'big-1'});
note "the delete " . ($out =~ /t/ ? 'returned' : 'did not return') . " before the stop: $after";
ok($after eq "$big|Big|0" || $after eq "1|\$StreamDeleted|1",
	'the stream is whole, or only its tombstone with its audit row: never between');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT stream FROM cqrs.events GROUP BY stream
	  HAVING max(version) <> cqrs.stream_version(stream)) s}),
	'0', 'stream_version agrees with the log everywhere');

# --- 3. pg_dump and pg_restore
$node->safe_psql('postgres', q{SELECT cqrs.delete_stream('p-5', hard => true)});
my $dump = "$PostgreSQL::Test::Utils::tmp_check/lifecycle.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE target');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('target'), $dump ], 'pg_restore');

my $small = q{
SELECT string_agg(stream || ':' || version || ':' || type || ':' || data::text, ' ' ORDER BY position)
  FROM cqrs.events WHERE stream LIKE 'p-%'};
is($node->safe_psql('target', $small), $node->safe_psql('postgres', $small),
	'the restored log has the same tombstones, truncated and erased streams');
my $full_audit = q{SELECT string_agg(id || ':' || operation || ':' || coalesce(target, '') || ':'
	                   || events || ':' || detail::text || ':' || performed_by || ':' || occurred_at,
	                   ' ' ORDER BY id) FROM cqrs.lifecycle_log};
is($node->safe_psql('target', $full_audit), $node->safe_psql('postgres', $full_audit),
	'the restored audit trail is the same');
for my $s ('p-1', 'p-2', 'p-5')
{
	my ($ret, $o, $e) = $node->psql('target',
		"SELECT cqrs.append('$s', 'Late', '{}')", extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($e, qr/55000/, "after the restore, an append to deleted stream $s is refused");
}
is($node->safe_psql('target', q{SELECT string_agg(version || ':' || type, ',') FROM cqrs.read_stream('p-2')}),
	'5:$StreamDeleted', 'read_stream shows the soft-deleted stream as its tombstone');
my $last_id = $node->safe_psql('postgres', 'SELECT max(id) FROM cqrs.lifecycle_log');
$node->safe_psql('target', q{SELECT cqrs.truncate_stream('p-3', 4)});
cmp_ok($node->safe_psql('target', q{SELECT max(id) FROM cqrs.lifecycle_log WHERE target = 'p-3'}),
	'>', $last_id, 'a new operation after the restore audits under a new id');

$node->stop;
done_testing();
