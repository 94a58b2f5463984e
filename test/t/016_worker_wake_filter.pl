# test/t/016_worker_wake_filter.pl - a commit wakes the worker only for
# events a deferred projection wants
#
# With a long cqrs.naptime, the worker moves a projection's checkpoint only
# when woken.  A deferred projection reads category "order".  Appending to
# "invoice-1" must not wake the worker: its checkpoint stays below that
# event for seconds.  Appending to "order-1" wakes it: the checkpoint passes
# both events at once (the invoice one is filtered out, not skipped).

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('wake_filter', 'cqrs.naptime = 3600000');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE orders ("position" bigint PRIMARY KEY, stream text NOT NULL);
CREATE FUNCTION project(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO orders VALUES (e."position", e.stream)
$$;
SELECT cqrs.create_projection('orders', 'project', 'deferred', '{orders}',
                              categories => '{order}');
});

# the worker starts and catches up on the empty log
my $first = $node->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-0', 'Placed', '{}')});
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('orders', $first, '30 s')"),
	't', 'the worker applies a wanted event');

my $invoice = $node->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('invoice-1', 'Issued', '{}')});
sleep 3;
cmp_ok($node->safe_psql('postgres', q{SELECT cqrs.projection_position('orders')}),
	'<', $invoice, 'an event no deferred projection wants does not wake the worker');

my $order = $node->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-1', 'Placed', '{}')});
is($node->safe_psql('postgres', "SELECT cqrs.wait_for_projection('orders', $order, '10 s')"),
	't', 'a wanted event wakes it, long before the naptime');
is($node->safe_psql('postgres', q{SELECT string_agg(stream, ',' ORDER BY position) FROM orders}),
	'order-0,order-1', 'the other category was filtered out');

$node->stop;
done_testing();
