# test/t/026_filter_indexes_dump.pl - the filter indexes across pg_dump and
# pg_restore
#
# The filter indexes (0.7.0) are indexes of cqrs.events, a table of the
# extension: pg_dump leaves the table's definition, and so its indexes,
# to CREATE EXTENSION, which creates them again on restore.  So:
#   - a database with the indexes restores without error (pg_dump must not
#     emit them: restoring would then fail on "already exists"), and the
#     restored log has them, valid, and filtered reads use them;
#   - a database whose owner dropped them (drop_filter_indexes) gets them
#     back on restore: the choice is not carried, and the README says to
#     call cqrs.drop_filter_indexes() again after a restore.  This test
#     fails, and the README must change, the day pg_dump carries it.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('filter_indexes_dump');

my $indexes = q{SELECT string_agg(c.relname || ':' || i.indisvalid, ',' ORDER BY c.relname)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'cqrs.events'::regclass
   AND c.relname IN ('events_category_position_idx', 'events_type_position_idx')};
my $both = 'events_category_position_idx:true,events_type_position_idx:true';

for my $db ('with_indexes', 'without_indexes')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql(
		$db, q{
CREATE EXTENSION pg_cqrs;
SELECT count(*) FROM generate_series(1, 500) i,
  LATERAL cqrs.append('order-' || (i % 10), 'Placed', jsonb_build_object('i', i));
SELECT count(*) FROM generate_series(1, 5) i,
  LATERAL cqrs.append('rare-' || i, 'Rare', '{}');
});
}
$node->safe_psql('without_indexes', 'SELECT cqrs.drop_filter_indexes()');
is($node->safe_psql('without_indexes', $indexes), '', 'the owner dropped the filter indexes');

for my $db ('with_indexes', 'without_indexes')
{
	my $dump = $node->basedir . "/$db.dump";
	$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr($db) ],
		"pg_dump of $db");
	$node->safe_psql('postgres', "CREATE DATABASE ${db}_restored");
	# pg_restore exits non-zero if any statement failed ("already exists")
	$node->command_ok([ 'pg_restore', '-d', $node->connstr("${db}_restored"), $dump ],
		"pg_restore of $db without an error");
	is($node->safe_psql("${db}_restored", $indexes), $both,
		"after restoring $db the log has both filter indexes, valid");
	is( $node->safe_psql(
			"${db}_restored",
			q{SELECT string_agg(stream, ',' ORDER BY "position")
			    FROM cqrs.read_all(0, NULL, '{rare}')}),
		'rare-1,rare-2,rare-3,rare-4,rare-5',
		"filtered reads of the restored $db return the rare events");
}

$node->stop;
done_testing();
