# test/t/008_outbox_crash.pl - a crash between commit and consumption loses
# nothing
#
# Clients append events and publish messages in the same transactions while
# a pg_recvlogical consumer streams them.  The server is stopped with
# "immediate" (no shutdown checkpoint, the slot's last saved state is
# whatever a checkpoint or the consumer's feedback left) and restarted.
# The consumer, restarted on the same slot, then receives every event in
# the log and every message whose publish was acknowledged to its client:
# nothing committed is lost, however far the consumer had got.  A second
# slot nobody consumed before the crash delivers the whole history.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);

my $clients = 3;
my $statements = 3000;    # per client; more than run before the stop
my $stop_at = 1500;       # committed events before the immediate stop

my $node = cqrs_node('outbox_crash');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('live', 'pg_cqrs')");
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('idle', 'pg_cqrs')");

my $json = JSON::PP->new;
my $out = "$PostgreSQL::Test::Utils::tmp_check/live.jsonl";

sub start_consumer
{
	my ($slot, $file) = @_;
	my $stderr = '';
	return IPC::Run::start(
		[
			'pg_recvlogical', '-d', $node->connstr('postgres'),
			'--slot', $slot, '--start', '-f', $file, '-F', '1', '-s', '1', '--no-loop'
		],
		'>', '/dev/null', '2>', \$stderr);
}

# Each statement appends one event and publishes one message keyed by the
# event's id, in one transaction; psql prints the id once it committed.
my @runs;
for my $c (1 .. $clients)
{
	my $script = "$PostgreSQL::Test::Utils::tmp_check/client_$c.sql";
	open my $fh, '>', $script or die "could not write $script: $!";
	for my $i (1 .. $statements)
	{
		my $id = sprintf('%08x-0000-4000-8000-%012x', $c, $i);
		print $fh "BEGIN; SELECT FROM cqrs.append('c$c-" . ($i % 5)
		  . "', 'Ticked', '{\"i\": $i}', id => '$id'); "
		  . "SELECT FROM cqrs.publish('ticks', '{\"i\": $i}', '$id'); COMMIT; SELECT '$id';\n";
	}
	close $fh;
	my ($o, $e) = ("$script.out", "$script.err");
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-f', $script
		],
		'>', $o, '2>', $e);
	push @runs, { h => $h, out => $o };
}
my $consumer = start_consumer('live', $out);

ok($node->poll_query_until('postgres', "SELECT count(*) >= $stop_at FROM cqrs.events"),
	'the clients append');
$node->stop('immediate');
$_->{h}->finish for @runs;
$consumer->finish;

my %acked;
for my $r (@runs)
{
	$acked{$_} = 1 for grep { /^[0-9a-f-]{36}$/ } split /\n/, slurp_file($r->{out});
}
cmp_ok(scalar(keys %acked), '>', 100, 'appends and publishes were acknowledged before the crash');

# drop a line the kill may have torn, as a consumer would
my $text = -e $out ? slurp_file($out) : '';
$text =~ s/[^\n]*\z//;
open my $fh, '>', $out or die;
print $fh $text;
close $fh;
my $before = () = $text =~ /\n/g;
note "the consumer had received $before lines";

$node->start;
my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.events');
my %log_ids = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT id FROM cqrs.events');
is(scalar(grep { !$log_ids{$_} } keys %acked), 0, 'every acknowledged event is in the log');

# consume both slots to the end of WAL as it is now
my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
my $idle_out = "$PostgreSQL::Test::Utils::tmp_check/idle.jsonl";
for my $run ([ 'live', $out ], [ 'idle', $idle_out ])
{
	my $stderr = '';
	IPC::Run::run(
		[
			'pg_recvlogical', '-d', $node->connstr('postgres'), '--slot', $run->[0],
			'--start', '-f', $run->[1], '--endpos', $end, '--no-loop'
		],
		'>', '/dev/null', '2>', \$stderr)
	  or diag "pg_recvlogical: $stderr";
}

for my $run ([ 'live', $out ], [ 'idle', $idle_out ])
{
	my ($slot, $file) = @$run;
	my (%events, %messages, $bad);
	for my $line (grep { $_ ne '' } split /\n/, slurp_file($file))
	{
		my $o = eval { $json->decode($line) };
		if (!$o) { $bad++; next; }
		if (defined $o->{topic}) { $messages{ $o->{key} } = 1; }
		else { $events{ $o->{id} } = 1; }
	}
	is($bad // 0, 0, "$slot: every line is JSON");
	is(scalar(grep { !$events{$_} } keys %log_ids), 0, "$slot: every event of the log was delivered");
	is(scalar(grep { !$log_ids{$_} } keys %events), 0, "$slot: nothing but the log's events");
	is(scalar(grep { !$messages{$_} } keys %acked), 0,
		"$slot: every acknowledged message was delivered");
	# a message is delivered exactly when its transaction's event is
	is(scalar(grep { !$log_ids{$_} } keys %messages), 0,
		"$slot: no message of a transaction that did not commit");
}

$node->stop;
done_testing();
