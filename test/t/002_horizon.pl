# test/t/002_horizon.pl - the read_all horizon across databases and backends
#
# The horizon that keeps read_all below in-flight appends lives in shared
# memory, shared by every database of the cluster.  Positions belong to one
# database's log, so:
#   - an open append in one database holds back read_all in that database
#     and in no other;
#   - a backend terminated inside its appending transaction releases its
#     part of the horizon (nothing it appended can commit any more);
#   - a transaction that appended cannot be prepared (a prepared
#     transaction would hold the horizon with no backend behind it), and
#     the refusal leaves nothing behind.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $node = cqrs_node('horizon',
	q{max_prepared_transactions = 2});
for my $db (qw(db1 db2))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION pg_cqrs');
}

my $read = q{SELECT coalesce(string_agg(stream, ',' ORDER BY position), '')
               FROM cqrs.read_all()};

# An open append in db1.
my $bg = $node->background_psql('db1');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_safe(q{BEGIN; SELECT cqrs.append('a-1', 'A', '{}')});

$node->safe_psql('db2', q{SELECT cqrs.append('b-1', 'B', '{}')});
is($node->safe_psql('db2', $read), 'b-1',
	'an open append in another database does not hold back read_all');

$node->safe_psql('db1', q{SELECT cqrs.append('c-1', 'C', '{}')});
is($node->safe_psql('db1', $read), '',
	'an open append holds back read_all in its own database');

# Terminate it: its event can never commit, the horizon must move on.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('db1', "SELECT ($read) = 'c-1'", 't'),
	'a terminated appender releases the horizon');
eval { $bg->quit };

# PREPARE TRANSACTION after an append is refused.
my ($ret, $out, $err) = $node->psql('db1',
	q{BEGIN; SELECT cqrs.append('p-1', 'P', '{}'); PREPARE TRANSACTION 'p1';},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:\s+0A000/, 'an appending transaction cannot be prepared (0A000)');
is($node->safe_psql('db1', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
	'no prepared transaction was left behind');
$node->safe_psql('db1', q{SELECT cqrs.append('d-1', 'D', '{}')});
is($node->safe_psql('db1', $read), 'c-1,d-1',
	'read_all is not held back after the refused PREPARE');

$node->stop;
done_testing();
