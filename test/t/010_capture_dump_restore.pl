# test/t/010_capture_dump_restore.pl - captured tables survive pg_dump and
# pg_restore, and restoring them appends nothing
#
# A database with two captured tables (one in its own schema, under a
# category of its own) and a sync projection fed by their events is dumped
# with pg_dump -Fc and restored three ways: in one go, section by section
# (pre-data, data, post-data, as tools that restore in parallel do), and
# as a schema-only restore followed by a data-only one with
# --disable-triggers.  Each time:
#   - the log and the tables are the same row for row: loading the tables'
#     rows with COPY appended no event, because pg_restore creates the
#     capture triggers (post-data) after the data;
#   - cqrs.captures is back and each table has its two triggers, once;
#   - writes are captured again, continuing the streams, and feed the
#     projection; capture() says the table is already captured.
# (A data-only restore without --disable-triggers fires the capture triggers
# for the loaded rows, as it fires any trigger; the README says so.)

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('capture_dump_restore');

$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql(
	'source', q{
CREATE EXTENSION pg_cqrs;
CREATE SCHEMA crm;
CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE crm.notes (customer int, no int, body text, PRIMARY KEY (customer, no));
SELECT cqrs.capture('public.customers');
SELECT cqrs.capture('crm.notes', 'note');
CREATE TABLE public.names (stream text PRIMARY KEY, name text, events int NOT NULL);
CREATE FUNCTION public.names_handler(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO public.names VALUES (e.stream, e.data->>'name', 1)
  ON CONFLICT (stream) DO UPDATE SET name = excluded.name, events = public.names.events + 1
$$;
SELECT cqrs.create_projection('names', 'public.names_handler', 'sync', '{public.names}',
                              categories => '{customers}');
INSERT INTO public.customers SELECT i, 'c' || i FROM generate_series(1, 50) i;
UPDATE public.customers SET name = name || '!' WHERE id % 5 = 0;
DELETE FROM public.customers WHERE id % 7 = 0;
INSERT INTO crm.notes SELECT i % 10, i, 'note ' || i FROM generate_series(1, 30) i;
});

my $dump = $node->basedir . '/source.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('source') ],
	'pg_dump of the source database');

my $compare = q{SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM %s x};
my $captures = q{SELECT string_agg(source::text || ' ' || category || ' ' || type_prefix, '; '
                                   ORDER BY category) FROM cqrs.captures};
my $triggers = q{SELECT string_agg(tgrelid::regclass::text || ' ' || tgname, '; '
                                   ORDER BY tgrelid::regclass::text, tgname)
                   FROM pg_trigger WHERE tgname LIKE 'cqrs_capture%'};

sub check_restored
{
	my ($db, $how) = @_;

	for my $table ('cqrs.events', 'public.customers', 'crm.notes', 'public.names')
	{
		is($node->safe_psql($db, sprintf($compare, $table)),
			$node->safe_psql('source', sprintf($compare, $table)),
			"$how: $table is restored as it was, nothing appended");
	}
	is($node->safe_psql($db, $captures), $node->safe_psql('source', $captures),
		"$how: cqrs.captures is restored");
	is($node->safe_psql($db, $triggers),
		'crm.notes cqrs_capture; crm.notes cqrs_capture_truncate; '
		  . 'customers cqrs_capture; customers cqrs_capture_truncate',
		"$how: each captured table has its two triggers, once");

	$node->safe_psql($db, q{UPDATE public.customers SET name = 'renamed' WHERE id = 1});
	is( $node->safe_psql(
			$db,
			q{SELECT version || ' ' || type FROM cqrs.events
			   WHERE stream = 'customers-1' ORDER BY version DESC LIMIT 1}),
		'2 customers.updated',
		"$how: a write is captured again, continuing its stream");
	is($node->safe_psql($db, q{SELECT name || ' ' || events FROM public.names WHERE stream = 'customers-1'}),
		'renamed 2', "$how: and feeds the sync projection");
	$node->safe_psql($db, q{INSERT INTO crm.notes VALUES (3, 31, 'more')});
	is($node->safe_psql($db, q{SELECT count(*) FROM cqrs.events WHERE stream = 'note-3,31'}),
		'1', "$how: a composite-key table too");
	my ($ret, $out, $err) =
	  $node->psql($db, q{SELECT cqrs.capture('public.customers')});
	like($err, qr/table "customers" is already captured/,
		"$how: capture() finds the table captured");
}

# 1. in one go
$node->safe_psql('postgres', 'CREATE DATABASE whole');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('whole'), $dump ],
	'pg_restore in one go');
check_restored('whole', 'one go');

# 2. section by section
$node->safe_psql('postgres', 'CREATE DATABASE sections');
for my $section ('pre-data', 'data', 'post-data')
{
	$node->command_ok(
		[ 'pg_restore', "--section=$section", '-d', $node->connstr('sections'), $dump ],
		"pg_restore --section=$section");
}
check_restored('sections', 'by section');

# 3. schema first, then the data with --disable-triggers
$node->safe_psql('postgres', 'CREATE DATABASE split');
$node->command_ok([ 'pg_restore', '--schema-only', '-d', $node->connstr('split'), $dump ],
	'pg_restore --schema-only');
$node->command_ok(
	[
		'pg_restore', '--data-only', '--disable-triggers',
		'-d', $node->connstr('split'), $dump
	],
	'pg_restore --data-only --disable-triggers');
check_restored('split', 'data-only with --disable-triggers');

$node->stop;
done_testing();
