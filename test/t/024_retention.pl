# test/t/024_retention.pl - the worker's retention passes, and an immediate
# stop in the middle of one
#
# 160,000 events in 8,000 "acct" streams of 20 events, plus 2,000 events of
# another category, imported with cqrs.import_events.  A rule keeps the
# last 2 events of each "acct" stream; the worker runs it in batches of 200
# events (cqrs.retention_batch_size), each a transaction of its own with its
# audit row and the rule's new positions.  Once some batches have
# committed, and before the pass is over, the server is stopped with
# "immediate" (no shutdown checkpoint: recovery from WAL) and restarted
# with the worker's passes off (cqrs.retention_naptime = 0).  Then:
#   - every batch is all or nothing: the events gone are exactly those the
#     committed audit rows count, and the rule's own count agrees;
#   - nothing that should stay was lost: every stream keeps at least its
#     last 2 events and its head, stream_version is unchanged, the other
#     category is whole;
#   - the pass had not finished;
# then the passes are turned back on (set_retention of the same rule wakes
# the database's worker and keeps the rule's place) and the worker
# finishes: every "acct" stream holds exactly versions 19 and 20, the audit
# rows sum to the 144,000 removed, and an append continues at version 21.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $streams = 8000;
my $per_stream = 20;
my $total = $streams * $per_stream;
my $to_remove = $streams * ($per_stream - 2);

my $node = cqrs_node('retention',
	'cqrs.retention_batch_size = 200',
	'cqrs.retention_naptime = 200ms');
cqrs_import_accounts($node, $streams, $per_stream, 2000);
is($node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.events'),
	$total + 2000, 'the log holds every imported event');

# the rule: the worker starts on it at once
$node->safe_psql('postgres', q{SELECT cqrs.set_retention('acct', max_count => 2)});
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 3 FROM cqrs.lifecycle_log WHERE operation = 'retention'})
  or die 'the worker ran no retention batch';
$node->stop('immediate');
$node->append_conf('postgresql.conf', 'cqrs.retention_naptime = 0');
$node->start;

my ($gone, $audited, $rule_removed) = split /\|/, $node->safe_psql('postgres', qq{
SELECT $total + 2000 - (SELECT count(*) FROM cqrs.events),
       (SELECT coalesce(sum(events), 0) FROM cqrs.lifecycle_log WHERE operation = 'retention'),
       (SELECT removed FROM cqrs.retention_rules WHERE category = 'acct')});
ok($gone > 0, "some batches committed before the stop ($gone events removed)");
ok($gone < $to_remove, 'the pass had not finished');
is($audited, $gone, 'the committed audit rows count exactly the events gone');
is($rule_removed, $gone, 'and so does the rule');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT stream, max(version) AS head, count(*) FILTER (WHERE version > 18) AS last_two
    FROM cqrs.events WHERE stream LIKE 'acct-%' GROUP BY stream) s
 WHERE head = 20 AND last_two = 2 AND cqrs.stream_version(stream) = 20}),
	$streams, 'every stream kept its head and its last 2 events');
is($node->safe_psql('postgres', q{SELECT count(*) FROM cqrs.events WHERE stream LIKE 'other-%'}),
	2000, 'the other category is whole');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM cqrs.events e
 WHERE e.stream LIKE 'acct-%'
   AND e.version <= 18
   AND e.position <= (SELECT scan_position FROM cqrs.retention_rules)
   AND EXISTS (SELECT FROM cqrs.events h WHERE h.stream = e.stream AND h.version = e.version + 2
                  AND h.position <= (SELECT scan_position FROM cqrs.retention_rules))}),
	0, 'below the rule\'s stored position, nothing it should have removed is left');

# resume: the passes on again, the same rule wakes the worker, keeping its place
my $place = $node->safe_psql('postgres', 'SELECT scan_position FROM cqrs.retention_rules');
$node->safe_psql('postgres', q{ALTER SYSTEM SET cqrs.retention_naptime = '200ms'});
$node->reload;
$node->safe_psql('postgres', q{SELECT cqrs.set_retention('acct', max_count => 2)});
is($node->safe_psql('postgres', 'SELECT scan_position FROM cqrs.retention_rules'),
	$place, 'setting the same rule again keeps its place');
$node->poll_query_until('postgres',
	qq{SELECT count(*) = $streams * 2 FROM cqrs.events WHERE stream LIKE 'acct-%'})
  or die 'the worker did not finish the pass';
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT stream FROM cqrs.events WHERE stream LIKE 'acct-%' GROUP BY stream
  HAVING array_agg(version ORDER BY version) = '{19,20}') s}),
	$streams, 'the worker resumed: every stream holds versions 19 and 20');
is($node->safe_psql('postgres',
	q{SELECT sum(events) FROM cqrs.lifecycle_log WHERE operation = 'retention'}),
	$to_remove, 'the audit rows sum to every event removed');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT performed_by) || ' ' || min(performed_by)
	FROM cqrs.lifecycle_log WHERE operation = 'retention'}),
	'1 ' . $node->safe_psql('postgres', q{SELECT tableowner FROM pg_tables WHERE tablename = 'events' AND schemaname = 'cqrs'}),
	'the worker ran as the log\'s owner');
is($node->safe_psql('postgres', q{SELECT version FROM cqrs.append('acct-7', 'Deposited', '{}')}),
	21, 'an append continues the stream at version 21');

$node->stop;
done_testing();
