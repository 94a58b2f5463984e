# test/t/006_dump_restore.pl - the log and projection definitions survive
# pg_dump and pg_restore
#
# A database with events, a sync and a deferred projection (one of them
# failed at a poisoned event, with the event skipped later) is dumped with
# pg_dump -Fc and restored into a new database.  There:
#   - the log is the same row for row, and new appends continue above it;
#   - the projection catalog and skipped events are back, the handlers are
#     resolved again by signature (their OIDs changed), owners and read
#     tables too;
#   - restoring the log applied nothing a second time: the read tables
#     (restored as ordinary tables) equal those of the source;
#   - both projections go on applying new events exactly once;
#   - a data-only restore of the log into a fresh extension works too
#     (the INSERT guard lets the restoring superuser through);
#   - row-level security on cqrs.events (enabled, and a policy) comes
#     back: pg_dump does not write it for an extension's table, but
#     pg_cqrs records it in cqrs.log_security, which pg_dump carries and
#     whose loading puts it back (0.7.0; before, this test pinned its loss);
#     the tenant reads only its rows through the readers.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('dump_restore',
	q{cqrs.naptime = 100ms});

$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql(
	'source', q{
CREATE EXTENSION pg_cqrs;
CREATE SCHEMA app;
CREATE TABLE app.summary (stream text PRIMARY KEY, events int NOT NULL);
CREATE TABLE app.applied ("position" bigint PRIMARY KEY, times int NOT NULL DEFAULT 1);
CREATE FUNCTION app.summarize(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.summary VALUES (e.stream, 1)
  ON CONFLICT (stream) DO UPDATE SET events = app.summary.events + 1
$$;
CREATE FUNCTION app.record(e cqrs.events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF e.type = 'Poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
  INSERT INTO app.applied VALUES (e."position")
  ON CONFLICT ("position") DO UPDATE SET times = app.applied.times + 1;
END $$;
SELECT count(*) FROM generate_series(1, 200) i,
  LATERAL cqrs.append('order-' || (i % 10), 'Placed', jsonb_build_object('i', i));
SELECT cqrs.create_projection('summary', 'app.summarize', 'sync', '{app.summary}');
SELECT cqrs.create_projection('record', 'app.record', 'deferred', '{app.applied}');
SELECT cqrs.append('order-99', 'Poison', '{}');
SELECT cqrs.append('order-1', 'Placed', '{}');
CREATE ROLE dump_tenant_a;
ALTER TABLE cqrs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_a_reads ON cqrs.events FOR SELECT TO dump_tenant_a
  USING (metadata->>'tenant' = 'a');
GRANT USAGE ON SCHEMA cqrs TO dump_tenant_a;
GRANT SELECT ON cqrs.events TO dump_tenant_a;
SELECT cqrs.append('order-7', 'Placed', '{}', '{"tenant": "a"}');
});
ok( $node->poll_query_until(
		'source', q{SELECT state = 'failed' FROM cqrs.projection_status WHERE name = 'record'}),
	'the deferred projection stops at the poisoned event');
$node->safe_psql('source',
	q{SELECT cqrs.skip_event('record', error_position) FROM cqrs.projections WHERE name = 'record'});
ok( $node->poll_query_until(
		'source', q{SELECT lag_events = 0 FROM cqrs.projection_status WHERE name = 'record'}),
	'and catches up once the event is skipped');

my $dump = $node->basedir . '/source.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('source') ],
	'pg_dump of the source database');
$node->safe_psql('postgres', 'CREATE DATABASE target');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('target'), $dump ],
	'pg_restore into a new database');

my $compare = q{SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM %s x};
for my $table ('cqrs.events', 'app.summary', 'app.applied', 'cqrs.skipped_events')
{
	is($node->safe_psql('target', sprintf($compare, $table)),
		$node->safe_psql('source', sprintf($compare, $table)),
		"$table is restored as it was");
}
is( $node->safe_psql(
		'target',
		q{SELECT string_agg(name || ' ' || mode || ' ' || state || ' ' || handler || ' '
		                    || owner::text || ' ' || tables::text, '; ' ORDER BY name)
		    FROM cqrs.projections}),
	$node->safe_psql(
		'source',
		q{SELECT string_agg(name || ' ' || mode || ' ' || state || ' ' || handler || ' '
		                    || owner::text || ' ' || tables::text, '; ' ORDER BY name)
		    FROM cqrs.projections}),
	'the projection definitions are restored');
isnt(
	$node->safe_psql('target', q{SELECT 'app.record(cqrs.events)'::regprocedure::oid}),
	$node->safe_psql('source', q{SELECT 'app.record(cqrs.events)'::regprocedure::oid}),
	'the handler has a new OID in the restored database');

# New events in the restored database: positions continue, both projections apply them.
my $max = $node->safe_psql('target', 'SELECT max("position") FROM cqrs.events');
my $pos = $node->safe_psql('target',
	q{SELECT "position" FROM cqrs.append('order-1', 'Placed', '{}')});
cmp_ok($pos, '>', $max, 'a new append continues above the restored positions');
is($node->safe_psql('target', q{SELECT events FROM app.summary WHERE stream = 'order-1'}),
	$node->safe_psql('source', q{SELECT events + 1 FROM app.summary WHERE stream = 'order-1'}),
	'the sync projection applies the new event once');
ok( $node->poll_query_until(
		'target', qq{SELECT EXISTS (SELECT FROM app.applied WHERE "position" = $pos)}),
	'the deferred projection applies it, served by a worker in the new database');
is($node->safe_psql('target', 'SELECT count(*) FROM app.applied WHERE times <> 1'),
	'0', 'no event was applied twice');
is( $node->safe_psql(
		'target',
		q{SELECT count(*) FROM cqrs.events e
		   WHERE e.type <> 'Poison' AND NOT EXISTS (SELECT FROM app.applied a WHERE a."position" = e."position")}),
	'0', 'every event but the skipped one is applied');

is( $node->safe_psql(
		'target',
		q{SELECT relrowsecurity || ' ' || (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid)
		    FROM pg_class c WHERE c.oid = 'cqrs.events'::regclass}),
	'true 1',
	'row-level security on cqrs.events and its policy survive pg_dump and pg_restore');
is( $node->safe_psql(
		'target',
		q{SET ROLE dump_tenant_a; SELECT count(*) || ' ' || min(stream) FROM cqrs.read_all(0, 100000)}),
	'1 order-7',
	'the tenant reads only its own event through read_all after the restore');

# A data-only restore of the log into a database where the extension was
# just created (0.4.0: the INSERT guard lets the restoring superuser's COPY
# through, as it refuses an ordinary role's).
$node->safe_psql('postgres', 'CREATE DATABASE data_only');
$node->safe_psql('data_only', 'CREATE EXTENSION pg_cqrs');
$node->command_ok(
	[
		'pg_restore', '--data-only', '-n', 'cqrs', '-t', 'events', '-t', 'events_position_seq',
		'-d', $node->connstr('data_only'), $dump
	],
	'pg_restore --data-only of the log');
is($node->safe_psql('data_only', sprintf($compare, 'cqrs.events')),
	$node->safe_psql('source', sprintf($compare, 'cqrs.events')),
	'the data-only restore brings the log back as it was');
$pos = $node->safe_psql('data_only',
	q{SELECT "position" FROM cqrs.append('order-1', 'Placed', '{}')});
cmp_ok($pos, '>', $max, 'and appends continue above its positions');

# The whole database by sections: the schema first, then every table's
# data, then the indexes and constraints (as pg_restore --section does, and
# as tools that load data separately do).  The projections' rows, the log
# and the read tables come back, nothing is applied twice while the log is
# loaded, and the projections go on.
$node->safe_psql('postgres', 'CREATE DATABASE by_section');
for my $section ('pre-data', 'data', 'post-data')
{
	$node->command_ok(
		[ 'pg_restore', "--section=$section", '-d', $node->connstr('by_section'), $dump ],
		"pg_restore --section=$section");
}
for my $table ('cqrs.events', 'app.summary', 'app.applied', 'cqrs.skipped_events')
{
	is($node->safe_psql('by_section', sprintf($compare, $table)),
		$node->safe_psql('source', sprintf($compare, $table)),
		"$table is restored as it was, by sections");
}
$pos = $node->safe_psql('by_section',
	q{SELECT "position" FROM cqrs.append('order-1', 'Placed', '{}')});
is($node->safe_psql('by_section', q{SELECT events FROM app.summary WHERE stream = 'order-1'}),
	$node->safe_psql('source', q{SELECT events + 1 FROM app.summary WHERE stream = 'order-1'}),
	'the sync projection applies a new event once after a restore by sections');
ok( $node->poll_query_until(
		'by_section', qq{SELECT EXISTS (SELECT FROM app.applied WHERE "position" = $pos)}),
	'and the deferred one too');
is($node->safe_psql('by_section', 'SELECT count(*) FROM app.applied WHERE times <> 1'),
	'0', 'no event was applied twice');
is( $node->safe_psql(
		'by_section',
		q{SELECT relrowsecurity || ' ' || (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid)
		    FROM pg_class c WHERE c.oid = 'cqrs.events'::regclass}),
	'true 1',
	'row-level security comes back with the data section');

$node->stop;
done_testing();
