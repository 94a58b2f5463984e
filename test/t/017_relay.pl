# test/t/017_relay.pl - pg_cqrs_relay: the outbox into NATS JetStream
#
# The test starts its own nats-server -js on a free 127.0.0.1 port with a
# file store in its tmp_check, and checks, each time by reading the whole
# JetStream stream back (pg_cqrs_relay --verify):
#
#   - the relay publishes every event and cqrs.publish message once, with
#     Nats-Msg-Id = its id, on the subject of its category or topic, and
#     confirms the slot (confirmed_flush_lsn reaches the last commit);
#   - kill -9 of the relay mid-stream, then a restart: the slot was not
#     confirmed past what JetStream had, the new relay re-sends the rest
#     (and some already there: JetStream drops those by Nats-Msg-Id) --
#     still exactly N, none missing, no duplicate;
#   - kill -9 of nats-server mid-stream, then a restart on the same store:
#     the relay notices, starts a new session, and the stream is exact;
#   - an immediate stop of PostgreSQL mid-stream, then a restart: the same;
#   - in the stream, each stream's versions come in order without gaps;
#   - --create-slot --backfill: a missing slot (as after a failover on 15)
#     is created, and the events appended without it are back-filled from
#     the log after the relay's checkpoint.
#
# Skips when nats-server or pg_cqrs_relay (built only with libnats-dev) is
# not installed.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;
use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(usleep);

sub find_program
{
	my ($name) = @_;
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/bin', '/usr/local/bin')
	{
		return "$dir/$name" if $dir ne '' && -x "$dir/$name";
	}
	return undef;
}

my $nats_server = find_program('nats-server');
my $relay = find_program('pg_cqrs_relay');
plan skip_all => 'nats-server is not installed (Debian: nats-server)' unless $nats_server;
plan skip_all => 'pg_cqrs_relay is not installed (it is built when libnats-dev is)'
  unless $relay;

my $json = JSON::PP->new;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $timeout = $PostgreSQL::Test::Utils::timeout_default;

#
# nats-server -js on a free port, its store in tmp_check
#
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $url = "nats://127.0.0.1:$port";
my $store = "$tmp/nats_store";
mkdir $store;
my ($nats, $r);

# a test that dies must not leave nats-server or a relay running
END
{
	for my $h ($r, $nats)
	{
		next unless $h;
		eval { $h->signal('KILL'); $h->finish; };
	}
}

sub start_nats
{
	$nats = IPC::Run::start(
		[ $nats_server, '-js', '-a', '127.0.0.1', '-p', $port, '-sd', $store ],
		'>>', "$tmp/nats.log", '2>>', "$tmp/nats.log");
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port);
		if ($s) { close $s; return 1; }
		usleep(50_000);
	}
	die "nats-server did not start, see $tmp/nats.log";
}
start_nats();

my $node = cqrs_node('relay', 'wal_sender_timeout = 10s');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('outbox', 'pg_cqrs')");

my $relay_log = "$tmp/relay.log";

sub start_relay
{
	my (@extra) = @_;
	open my $fh, '>>', $relay_log or die;
	print $fh "---- relay starts\n";
	close $fh;
	return IPC::Run::start(
		[
			$relay, '-d', $node->connstr('postgres'), '-s', $url,
			'--create-stream', '--progress', '0.05', '--status-interval', '1',
			'--ack-timeout', '3000', '--checkpoint-file', "$tmp/relay.checkpoint", @extra
		],
		'>>', $relay_log, '2>>', $relay_log);
}

# the stream read back: (messages, duplicates, list of decoded bodies)
sub read_stream
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $relay, '--verify', '-s', $url ], '>', \$out, '2>', \$err);
	my ($n, $dups) = $err =~ /: (\d+) messages, \d+ distinct ids, (\d+) duplicates/;
	return (undef, undef, []) unless defined $n;
	return ($n, $dups, [ map { $json->decode($_) } grep { $_ ne '' } split /\n/, $out ]);
}

sub stream_count
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $relay, '--count', '-s', $url ], '>', \$out, '2>', \$err);
	return $err =~ /: (\d+) messages/ ? $1 : undef;
}

sub wait_stream_count
{
	my ($want) = @_;
	my $deadline = time + $timeout;
	my $n;
	while (time < $deadline)
	{
		$n = stream_count();
		return $n if defined $n && $n >= $want;
		usleep(200_000);
	}
	return $n;
}

# events published so far, according to the relay's last progress line
sub relay_progress
{
	return 0 unless -e $relay_log;
	my @m = slurp_file($relay_log) =~ /(\d+) events, \d+ messages/g;
	return @m ? $m[-1] : 0;
}

sub wait_progress_over
{
	my ($since, $more) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my @m = slurp_file($relay_log) =~ /(\d+) events, \d+ messages/g;
		return 1 if @m > $since && $m[-1] >= $more;
		usleep(10_000);
	}
	return 0;
}

sub progress_lines { return scalar(() = slurp_file($relay_log) =~ /\d+ events, \d+ messages/g); }

# $txns transactions of 5 events each over 20 streams of category $cat, a
# message every 10 transactions
my $messages = 0;

sub append_sql
{
	my ($cat, $txns) = @_;
	return join("\n",
		map {
			my $t = $_;
			$messages++ if $t % 10 == 0;
			"BEGIN; SELECT FROM cqrs.append_events('$cat-" . ($t % 20) . "', "
			  . "(SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('t', $t, 'k', k))) "
			  . "FROM generate_series(1, 5) k));"
			  . ($t % 10 == 0 ? " SELECT FROM cqrs.publish('ticks', '{\"t\": $t}', 'k$t');" : '')
			  . " COMMIT;"
		} 1 .. $txns);
}

# the whole check: exactly every event of the log and every message, once
sub check_exact
{
	my ($what) = @_;
	my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.events');
	my $n = wait_stream_count($events + $messages);
	my ($count, $dups, $bodies) = read_stream();
	is($count, $events + $messages, "$what: JetStream holds every event and message");
	is($dups, 0, "$what: no duplicate Nats-Msg-Id");
	my %in_stream = map { $_->{id} => 1 } @$bodies;
	my @log_ids = split /\n/, $node->safe_psql('postgres', 'SELECT id FROM cqrs.events');
	is(scalar(grep { !$in_stream{$_} } @log_ids), 0, "$what: no event of the log is missing");
	my (%last, $disorder);
	for my $b (@$bodies)
	{
		next unless defined $b->{stream};
		$disorder++ if ($last{ $b->{stream} } // 0) + 1 != $b->{version};
		$last{ $b->{stream} } = $b->{version};
	}
	is($disorder // 0, 0, "$what: each stream's versions in order, without gaps");
	return $bodies;
}

sub wait_confirmed
{
	my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
	return $node->poll_query_until('postgres',
		"SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'outbox'");
}

#
# 1. a plain run
#
$node->safe_psql('postgres', append_sql('order', 100));
$r = start_relay();
my $bodies = check_exact('first run');
ok(wait_confirmed(), 'the slot is confirmed up to the end');
my ($ev) = grep { defined $_->{stream} } @$bodies;
my ($msg) = grep { defined $_->{topic} } @$bodies;
like($ev->{stream}, qr/^order-\d+$/, 'the body is the event line');
ok(defined $msg, 'cqrs.publish messages are published too');

# subjects: read one message of each kind by subject
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $relay, '--verify', '-s', $url, '--stream', 'NOSUCH' ], '>', \$out, '2>', \$err);
	like($err, qr/no stream NOSUCH/, '--verify on a missing stream says so');
}

# Each crash below happens while the relay works through a backlog of
# 30000 events: it is stopped (SIGTERM), the backlog is appended, and it is
# started again; the crash comes with its first progress line that shows
# events published, well before the end.
my $batch_events = 30000;

sub backlog
{
	my ($cat) = @_;
	$r->signal('TERM');
	$r->finish;
	$node->safe_psql('postgres', append_sql($cat, $batch_events / 5));
	my $lines = progress_lines();
	$r = start_relay();
	return wait_progress_over($lines, 500);
}

sub slot_behind
{
	return $node->safe_psql('postgres',
		"SELECT confirmed_flush_lsn < pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = 'outbox'"
	);
}

#
# 2. kill -9 of the relay mid-stream
#
ok(backlog('kill'), 'the relay is streaming the second batch');
$r->signal('KILL');
$r->finish;
my $at_kill = relay_progress();
note "relay killed after $at_kill events of $batch_events";
is(slot_behind(), 't', 'killed before the slot was confirmed to the end');
my $lines = progress_lines();
$r = start_relay();
check_exact('after kill -9 of the relay');
ok(wait_confirmed(), 'the restarted relay confirms up to the end');
ok(wait_progress_over($lines, 1), 'the restarted relay reported progress');
note 'the restarted relay published ' . relay_progress()
  . " events: the re-sent ones were dropped by Nats-Msg-Id";

#
# 3. kill -9 of nats-server mid-stream, restarted on the same store
#
ok(backlog('nats'), 'the relay is streaming the third batch');
$nats->signal('KILL');
$nats->finish;
note 'nats-server killed after ' . relay_progress() . " events of $batch_events";
is(slot_behind(), 't', 'nats-server killed before the slot was confirmed to the end');
usleep(300_000);
start_nats();
check_exact('after kill -9 of nats-server');
ok(wait_confirmed(), 'the relay confirms up to the end after nats-server restarted');

#
# 4. PostgreSQL stopped in immediate mode mid-stream, and restarted
#
ok(backlog('crash'), 'the relay is streaming the fourth batch');
$node->stop('immediate');
note 'PostgreSQL stopped after ' . relay_progress() . " events of $batch_events";
$node->start;
check_exact('after an immediate stop of PostgreSQL');
ok(wait_confirmed(), 'the relay confirms up to the end after PostgreSQL restarted');
like(slurp_file($relay_log), qr/starting again from the slot's confirmed position/,
	'the relay started new sessions');

$r->signal('TERM');
$r->finish;
is($r->result(0), 0, 'SIGTERM: a clean exit');

#
# 5. a missing slot: an error without --create-slot, created with it
#
$node->safe_psql('postgres', "SELECT pg_drop_replication_slot('outbox')");
my ($out, $err) = ('', '');
IPC::Run::run([ $relay, '-d', $node->connstr('postgres'), '-s', $url ], '>', \$out, '2>', \$err);
like($err, qr/slot "outbox" does not exist/, 'a missing slot is an error');
# events appended while no slot exists (as between a promotion and the
# slot's re-creation): only --backfill brings them, from the log
ok(-s "$tmp/relay.checkpoint", 'the relay kept a checkpoint');
note 'checkpoint: position ' . slurp_file("$tmp/relay.checkpoint");
$node->safe_psql('postgres', append_sql('lost', 9));
$r = start_relay('--create-slot', '--backfill');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'outbox'"),
	'--create-slot creates the slot');
$node->safe_psql('postgres', append_sql('after', 10));
my $after = check_exact('after the slot was created again and back-filled');
is(scalar(grep { $_->{backfill} } @$after), 45, 'the 45 events appended without a slot were back-filled');
like(slurp_file($relay_log), qr/back-filled \d+ events/, 'the relay says it back-filled');
ok(!-e "$tmp/relay.checkpoint.backfill", 'the back-fill marker is gone once it is done');
$r->signal('TERM');
$r->finish;

$nats->signal('TERM');
$nats->finish;
$node->stop;
done_testing();
