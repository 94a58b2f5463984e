# test/t/014_million_streams.pl - one open transaction appends to a million
# streams; everybody else goes on (issue 14)
#
# One transaction appends one event to each of 1,000,000 distinct streams,
# with the server's default max_locks_per_transaction (and the test
# cluster's max_connections = 10: a small shared lock table).  A lock per
# stream held to commit would fill the shared lock table after a few
# thousand streams: the big statement itself, or whoever needs a lock next,
# would fail with "out of shared memory".  Here:
#   - the statement appends all 1,000,000 events (its time is reported);
#   - while its transaction is open, it holds a bounded number of locks
#     (not one per stream);
#   - new connections start and append (single events, batches, with an
#     expected version) to streams it did not touch, each under a
#     lock_timeout, so none of them may wait on a lock; they can also read;
#   - an append to one of its streams waits (on a lock, as seen in
#     pg_stat_activity) until it commits, then gets version 2;
#   - after the commit every stream is there, versions gapless;
#   - events given ids take no lock per event either: one transaction
#     appends 20,000 of them, to as many streams, and holds few locks.

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

my $n = 1_000_000;
my $others = 5;    # new connections appending while the big transaction is open

my $node = cqrs_node('million_streams');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
note 'max_locks_per_transaction = '
  . $node->safe_psql('postgres', 'SHOW max_locks_per_transaction')
  . ', max_connections = ' . $node->safe_psql('postgres', 'SHOW max_connections');

# A psql session we feed statement by statement; each statement is followed
# by an \echo marker we wait for.
sub start_session
{
	my ($name, $timeout) = @_;
	my %s = (in => '', out => '', err => '');
	$s{timer} = IPC::Run::timer($timeout);
	$s{h} = IPC::Run::start(
		[
			'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-f', '-',
			'-d', $node->connstr('postgres') . " application_name=$name"
		],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err}, $s{timer});
	return \%s;
}

# Send SQL followed by a marker; wait_for returns what the session printed
# before the marker, or undef on an error or a timeout (the error is in
# $s->{err}).
sub send_sql
{
	my ($s, $sql, $marker) = @_;
	$s->{in} .= "$sql\n\\echo $marker\n";
	$s->{h}->pump_nb;
}

sub wait_for
{
	my ($s, $marker) = @_;
	$s->{timer}->start;
	$s->{h}->pump
	  until $s->{out} =~ /^\Q$marker\E$/m
	  || $s->{err} =~ /ERROR|FATAL|PANIC/
	  || $s->{timer}->is_expired
	  || !$s->{h}->pumpable;
	return undef unless $s->{out} =~ s/^(.*?)^\Q$marker\E\n?//ms;
	my $got = $1;
	chomp $got;
	return $got;
}

sub run_in
{
	my ($s, $sql, $marker) = @_;
	send_sql($s, $sql, $marker);
	return wait_for($s, $marker);
}

my $big = start_session('big', 10 * $PostgreSQL::Test::Utils::timeout_default);
my $big_pid = run_in($big, 'BEGIN; SELECT pg_backend_pid();', 'began');

my $t0 = time;
my $appended = run_in($big,
	"SELECT count(*) FROM generate_series(1, $n) g, cqrs.append('s-' || g, 'T', '{}') a;",
	'appended');
my $secs = time - $t0;
unless (is($appended, $n, "one transaction appended to $n streams"))
{
	diag sprintf('the big append failed after %.1f s: %s', $secs, $big->{err});
	$node->stop;
	done_testing();
	exit;
}
diag sprintf('appending to %d streams in one statement took %.1f s', $n, $secs);

# Its locks, with the transaction open.
my $locks = $node->safe_psql('postgres',
	"SELECT count(*) FROM pg_locks WHERE pid = $big_pid");
cmp_ok($locks, '<', 100, "the open transaction holds few locks ($locks), not one per stream");

# New connections append to other streams without waiting.
my @slow;
for my $i (1 .. $others)
{
	my $t = time;
	my ($rc, $out, $err) = $node->psql(
		'postgres', qq{
		SET lock_timeout = '10s';
		SELECT version FROM cqrs.append('other-$i', 'T', '{}');
		SELECT version FROM cqrs.append('s-' || ($n + $i), 'T', '{}', expected_version => 0);
		SELECT version FROM cqrs.append_events('batch-$i', '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]');
		SELECT cqrs.stream_version('s-$i');
	});
	my $took = time - $t;
	is($rc, 0, "connection $i starts and appends while the big transaction is open")
	  or diag $err;
	is($out, "1\n1\n2\n0", "connection $i: new streams at version 1, batch at 2, big's streams not visible");
	push @slow, sprintf('%.1f', $took) if $took > 5;
}
is(scalar(@slow), 0, 'no connection took more than 5 s') or diag "took: @slow s";

# An append to one of its streams waits for it.
my $waiter = start_session('waiter', 10 * $PostgreSQL::Test::Utils::timeout_default);
send_sql($waiter, "SELECT version FROM cqrs.append('s-500000', 'T', '{}');", 'waited');
ok( $node->poll_query_until(
		'postgres',
		"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE application_name = 'waiter'"),
	'an append to one of its streams waits on a lock');
# still waiting a moment later
sleep 1;
$waiter->{h}->pump_nb;
is($waiter->{out}, '', 'and has not returned while the big transaction is open');

$t0 = time;
is(run_in($big, 'COMMIT;', 'committed'), '', 'the big transaction commits');
diag sprintf('its commit took %.1f s', time - $t0);

is(wait_for($waiter, 'waited'), '2', 'the waiting append returns version 2 after the commit')
  or diag $waiter->{err};

$big->{in} .= "\\q\n";
$waiter->{in} .= "\\q\n";
$_->{h}->finish for ($big, $waiter);

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE stream ~ '^s-[0-9]+$'), count(DISTINCT stream) FILTER (WHERE stream ~ '^s-[0-9]+$'),
	       cqrs.stream_version('s-1'), cqrs.stream_version('s-1000000'), cqrs.stream_version('s-500000')
	  FROM cqrs.events}),
	($n + $others + 1) . '|' . ($n + $others) . '|1|1|2',
	'every stream is in the log after the commit');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT stream FROM cqrs.events GROUP BY stream
	  HAVING min(version) <> 1 OR max(version) <> count(*)) s}),
	'0',
	'versions are gapless in every stream');

# Caller-given ids: no lock per id held to commit either.
my ($rc, $stdout, $stderr) = $node->psql(
	'postgres', q{
	BEGIN;
	SELECT count(*) FROM generate_series(1, 20000) g,
	       cqrs.append('id-' || g, 'T', '{}', id => md5('id-' || g)::uuid) a;
	SELECT count(*) < 100 FROM pg_locks WHERE pid = pg_backend_pid();
	COMMIT;
});
is("$rc|$stdout", "0|20000\nt", 'one transaction appends 20,000 events with ids and holds few locks')
  or diag $stderr;

$node->stop;
done_testing();
