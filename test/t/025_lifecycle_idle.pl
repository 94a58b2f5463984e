# test/t/025_lifecycle_idle.pl - a transaction that pauses (or otherwise
# changes) a sync projection holds every append until it ends; one left
# idle is ended after cqrs.lifecycle_idle_timeout, and the appends go on
#
# The owner pauses its sync projection in an open transaction and goes
# idle.  An append from another session waits (the ShareLock on
# cqrs.projections); after the timeout the server ends the owner's session,
# its pause rolls back, and the waiting append completes and is applied by
# the projection.  A session whose own idle_in_transaction_session_timeout
# is lower keeps it; cqrs.lifecycle_idle_timeout = 0 imposes nothing.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('lifecycle_idle', 'cqrs.lifecycle_idle_timeout = 2s');
$node->safe_psql('postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE ROLE owner LOGIN;
GRANT CREATE ON SCHEMA public TO owner;
CREATE ROLE writer LOGIN;
GRANT USAGE ON SCHEMA cqrs TO owner, writer;
GRANT INSERT ON cqrs.events TO writer;
GRANT EXECUTE ON FUNCTION cqrs.create_projection(text, regproc, text, regclass[], text[], text[], boolean),
                 cqrs.pause_projection(text) TO owner;
SET ROLE owner;
CREATE TABLE public.seen ("position" bigint PRIMARY KEY);
CREATE FUNCTION public.project(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO public.seen VALUES (e."position")
$$;
SELECT cqrs.create_projection('seen', 'public.project', 'sync', '{public.seen}');
});

# Pause in a transaction left open and idle; return the session.
sub idle_pause
{
	my ($set) = @_;
	my $owner = $node->background_psql('postgres', on_error_stop => 0);
	$owner->query_safe("SET ROLE owner");
	$owner->query_safe($set) if $set;
	$owner->query_safe("BEGIN");
	$owner->query_safe("SELECT cqrs.pause_projection('seen')");
	return $owner;
}

# An append as the writer; how long it took.
sub timed_append
{
	my ($stream) = @_;
	my $t0 = time;
	$node->safe_psql('postgres',
		"SET ROLE writer; SELECT cqrs.append('$stream', 'E', '{}')",
		timeout => 60);
	return time - $t0;
}

# 1. the default bound of this cluster: 2 s
my $owner = idle_pause();
my $waited = timed_append('order-1');
cmp_ok($waited, '>=', 1.5, "the append waited for the idle pause ($waited s)");
cmp_ok($waited, '<', 10, "and no longer than about the 2 s bound");
ok($node->log_contains('idle-in-transaction timeout'),
	'the owner\'s idle session was ended by the timeout');
is($node->safe_psql('postgres', q{
	SELECT state FROM cqrs.projections WHERE name = 'seen'}),
	'running', 'its pause rolled back');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM seen s JOIN cqrs.events e USING ("position")
	 WHERE e.stream = 'order-1'}),
	'1', 'the waiting append was applied by the projection');
$owner->quit;

# 2. a lower timeout of the session's own is kept
$owner = idle_pause("SET idle_in_transaction_session_timeout = '500ms'");
$waited = timed_append('order-2');
cmp_ok($waited, '<', 1.8, "the session's own lower bound is kept ($waited s)");
$owner->quit;

# 3. the bound lasts until the transaction's end only: a session idle
# outside a transaction afterwards is left alone
$owner = $node->background_psql('postgres', on_error_stop => 0);
$owner->query_safe("SET ROLE owner");
$owner->query_safe("BEGIN; SELECT cqrs.pause_projection('seen'); ROLLBACK");
is($owner->query_safe("SHOW idle_in_transaction_session_timeout"), '0',
	'after the transaction the session has its own setting back');
$owner->quit;

# 4. 0 imposes nothing: the append waits until the owner ends the
# transaction itself
$node->append_conf('postgresql.conf', 'cqrs.lifecycle_idle_timeout = 0');
$node->reload;
$owner = idle_pause();
my $writer = $node->background_psql('postgres', on_error_stop => 0);
$writer->query_safe("SET ROLE writer");
$writer->query_until(qr/started/, q{
\echo started
SELECT cqrs.append('order-3', 'E', '{}');
});
sleep 4;
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_locks
	 WHERE relation = 'cqrs.projections'::regclass AND NOT granted}),
	'1', 'with no bound, the append still waits after 4 s');
$owner->query_safe("ROLLBACK");
$owner->quit;
$writer->quit;
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM cqrs.events WHERE stream = 'order-3'}),
	'1', 'and completes when the owner ends its transaction');

$node->stop;
done_testing();
