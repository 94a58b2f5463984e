# test/t/015_import_crash.pl - a crash in the middle of cqrs.import_events()
#
# cqrs.import_events(stream, type, data, metadata, id ORDER BY n) appends a
# whole staging table in one statement, atomically.  A staging table of
# 300,000 events over 1,000 streams (which already hold 2 events each, and
# the first 1,000 staged events, imported beforehand) is imported by a
# background session; once it has written a megabyte of rows or run for a
# second, still running, the server is stopped with "immediate" (no
# shutdown checkpoint: recovery from WAL) and restarted.  Then:
#   - the import did not return, and the log holds none of the events it
#     was importing: exactly what was there before;
#   - versions are gapless and stream_version agrees, read_all returns the
#     whole log (no horizon left behind by the cut-off import);
#   - an append continues its stream at the next version, above every old
#     position;
#   - the import run again appends the 299,000 missing events (the 1,000
#     already recorded are skipped), in n order within each stream, gapless
#     after the append made since; a third run appends nothing.
# Skips itself while cqrs.import_events does not exist.

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

my $n = 300_000;
my $streams = 1000;
my $early = 1000;    # staged events imported before the crash

my $node = cqrs_node('import_crash');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
plan skip_all => 'cqrs.import_events() does not exist yet'
  unless $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_proc WHERE proname = 'import_events' AND pronamespace = 'cqrs'::regnamespace})
  > 0;

$node->safe_psql(
	'postgres', qq{
CREATE TABLE staging (n bigint PRIMARY KEY, stream text, type text, data jsonb, metadata jsonb, id uuid);
INSERT INTO staging
SELECT g, 'imp-' || (g % $streams), 'Imported',
       jsonb_build_object('g', g, 'pad', repeat(md5(g::text), 8)),
       jsonb_build_object('source', 'staging'), md5('imp-' || g)::uuid
  FROM generate_series(1, $n) g;
SELECT count(*) FROM generate_series(0, $streams - 1) s, generate_series(1, 2) v,
       LATERAL cqrs.append('imp-' || s, 'Opened', jsonb_build_object('v', v)) a;
});

my $import = 'SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) FROM staging';
is($node->safe_psql('postgres', "$import WHERE n <= $early"),
	$early, "the first $early staged events import");
my $before = $node->safe_psql('postgres',
	'SELECT count(*), max("position") FROM cqrs.events');
my ($count_before, $max_before) = split /\|/, $before;
my $size_before = $node->safe_psql('postgres', q{SELECT pg_relation_size('cqrs.events')});
is($count_before, 2 * $streams + $early, 'the log before the crash');

# The import, in the background.
my ($out, $err) = ('', '');
my $t0 = time;
my $h = IPC::Run::start(
	[
		'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
		'-d', $node->connstr('postgres') . ' application_name=importer',
		'-c', $import
	],
	'>', \$out, '2>', \$err);

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity
		   WHERE application_name = 'importer' AND query LIKE '%import_events%'}),
	'the import starts');
# Running for a second, or writing rows already (cqrs.events grew by a
# megabyte), whichever comes first; or no longer running.
$node->poll_query_until(
	'postgres', qq{
	SELECT coalesce(bool_and(state <> 'active' OR now() - query_start > interval '1 s'
	                         OR pg_relation_size('cqrs.events') > $size_before + 1024 * 1024), true)
	  FROM pg_stat_activity WHERE application_name = 'importer'})
  or diag 'the import has not been running for a second';
my $state = $node->safe_psql('postgres',
	q{SELECT state || ', ' || pg_size_pretty(pg_relation_size('cqrs.events')) || ' in cqrs.events'
	    FROM pg_stat_activity WHERE application_name = 'importer'});
like($state, qr/^active,/, 'the import is still running')
  or diag "importer: $err";
$node->stop('immediate');
my $ran = time - $t0;
$h->finish;
note sprintf('the import ran %.1f s before the stop (%s)', $ran, $state);
is($out, '', 'the import did not return: it was cut off in the middle')
  or diag "the import finished before the stop, in under ${ran}s: make the staging table bigger";
like($err, qr/server closed the connection|terminating connection|connection to server/,
	'the importer lost its connection');

$node->start;

is( $node->safe_psql(
		'postgres', qq{
	SELECT count(*), max("position"),
	       (SELECT count(*) FROM cqrs.events e JOIN staging s ON s.id = e.id WHERE s.n > $early)
	  FROM cqrs.events}),
	"$count_before|$max_before|0",
	'the log holds none of the events the import was importing');

my $gapless = q{
	SELECT count(*) FROM (
	  SELECT stream FROM cqrs.events GROUP BY stream
	  HAVING min(version) <> 1 OR max(version) <> count(*)
	      OR max(version) <> cqrs.stream_version(stream)) s};
is($node->safe_psql('postgres', $gapless), '0',
	'versions are gapless in every stream and stream_version agrees');
is( $node->safe_psql(
		'postgres',
		'SELECT count(*) = (SELECT count(*) FROM cqrs.events) FROM cqrs.read_all(0, 1000000)'),
	't',
	'read_all returns the whole log after the restart');

# An append continues a stream the import was writing to.
my ($v, $p) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT version, \"position\" FROM cqrs.append('imp-7', 'AfterRestart', '{}')");
my $imp7 = 2 + $early / $streams;
is($v, $imp7 + 1, 'an append after the restart continues the stream');
cmp_ok($p, '>', $max_before, 'at a position above every old one');

# The import again: everything not yet recorded, in n order per stream.
$t0 = time;
is($node->safe_psql('postgres', $import), $n - $early,
	'the import run again appends the events not yet recorded');
diag sprintf('importing %d events took %.1f s', $n - $early, time - $t0);
is($node->safe_psql('postgres', $gapless), '0', 'versions are gapless after the import');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT e.version, s.n, lag(s.n) OVER (PARTITION BY e.stream ORDER BY e.version) AS prev_n
	    FROM cqrs.events e JOIN staging s ON s.id = e.id) x
	 WHERE prev_n > n}),
	'0',
	'each stream got its events in n order');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*), cqrs.stream_version('imp-7') FROM cqrs.events e JOIN staging s USING (id, stream)}),
	"$n|" . ($imp7 + 1 + ($n - $early) / $streams),
	'every staged event is in the log once, in its stream');
is($node->safe_psql('postgres', $import), '0', 'a third run appends nothing');

$node->stop;
done_testing();
