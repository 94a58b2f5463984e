# test/t/007_outbox_recvlogical.pl - pg_recvlogical consumers of the outbox
#
#   - pg_recvlogical --start -f FILE gets one JSON object per line, for
#     events and published messages;
#   - a consumer killed (SIGKILL: no goodbye, no final feedback) mid-stream
#     and restarted on the same slot receives every event and message at
#     least once and, after dedupe by id, exactly once, with each stream's
#     versions in order;
#   - options reach the plugin over the replication protocol: a bare
#     "-o include-metadata" means true, a bare "-o format" is an error with
#     a hint;
#   - a consumer whose filters let nothing through still confirms what it
#     has passed: its slot does not pin WAL.

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

my $node = cqrs_node('outbox_recvlogical', 'wal_sender_timeout = 10s');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('outbox', 'pg_cqrs')");

my $out = "$PostgreSQL::Test::Utils::tmp_check/outbox.jsonl";
my $json = JSON::PP->new;

sub start_consumer
{
	my ($file, $slot, @opts) = @_;
	my ($stdout, $stderr) = ('', '');
	my $h = IPC::Run::start(
		[
			'pg_recvlogical', '-d', $node->connstr('postgres'),
			'--slot', $slot, '--start', '-f', $file,
			'-F', '1', '-s', '1', map { ('-o', $_) } @opts
		],
		'>', \$stdout, '2>', \$stderr);
	return { h => $h, err => \$stderr };
}

sub lines_of
{
	my ($file) = @_;
	return () unless -e $file;
	return grep { $_ ne '' } split /\n/, slurp_file($file);
}

# wait until the file holds at least $n lines
sub wait_lines
{
	my ($file, $n) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		return 1 if scalar(lines_of($file)) >= $n;
		usleep(50_000);
	}
	return 0;
}

# 3000 events in 600 transactions over 50 streams, a message every 10
# transactions: enough to still be streaming when the consumer is killed
my $appends = join("\n",
	map {
		my $t = $_;
		"BEGIN; SELECT FROM cqrs.append_events('order-" . ($t % 50) . "', "
		  . "(SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('t', $t, 'k', k))) "
		  . "FROM generate_series(1, 5) k));"
		  . ($t % 10 == 0 ? " SELECT FROM cqrs.publish('ticks', '{\"t\": $t}', 'k$t');" : '')
		  . " COMMIT;"
	} 1 .. 600);
$node->safe_psql('postgres', $appends);

my $c = start_consumer($out, 'outbox');
ok(wait_lines($out, 500), 'the consumer receives events');
# no goodbye: the server only knows what the last status update confirmed
$c->{h}->signal('KILL');
$c->{h}->finish;
# A consumer killed mid-write may leave a torn last line; like any consumer
# of a line protocol it drops the incomplete line when it starts again.
my $text = slurp_file($out);
my $torn = $text =~ /\n\z/ ? 0 : 1;
$text =~ s/[^\n]*\z//;
open my $fh, '>', $out or die "could not rewrite $out: $!";
print $fh $text;
close $fh;
my $first = scalar(lines_of($out));
note "$first lines before the kill" . ($torn ? ', and a torn one' : '');

# more while nobody is listening
$node->safe_psql('postgres', $appends =~ s/'order-/'late-/gr);

$c = start_consumer($out, 'outbox');
my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM cqrs.events');
is($events, 6000, 'the log holds 6000 events');
my $messages = 120;

# wait until every event and message arrived at least once
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
my (%seen, $dups, $bad);
while (time < $deadline)
{
	%seen = ();
	($dups, $bad) = (0, 0);
	for my $line (lines_of($out))
	{
		my $o = eval { $json->decode($line) };
		if (!$o || !$o->{id}) { $bad++; next; }
		$dups++ if $seen{ $o->{id} }++;
	}
	last if scalar(keys %seen) >= $events + $messages;
	usleep(100_000);
}
$c->{h}->signal('TERM');
$c->{h}->finish;

is($bad, 0, 'every line is a JSON object with an id');
is(scalar(keys %seen), $events + $messages,
	'after dedupe by id: every event and message exactly once');
note "$dups duplicate lines after the restart";

my %log_ids = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT id FROM cqrs.events');
is(scalar(grep { !$seen{$_} } keys %log_ids), 0, 'no event of the log is missing');
my %msg_ids;
for my $line (grep { /^\{"topic"/ } lines_of($out))
{
	$msg_ids{ $json->decode($line)->{id} } = 1;
}
is(scalar(keys %msg_ids), $messages, 'every message arrived');

# in the deduplicated stream, each stream's versions come in order
my (%last, $disorder, %first_seen);
for my $line (lines_of($out))
{
	my $o = $json->decode($line);
	next if $first_seen{ $o->{id} }++ || !defined $o->{stream};
	$disorder++ if ($last{ $o->{stream} } // 0) + 1 != $o->{version};
	$last{ $o->{stream} } = $o->{version};
}
is($disorder // 0, 0, 'each stream arrives in version order, without gaps');

# a message line has its documented fields
my ($msg) = grep { /"topic"/ } lines_of($out);
my $m = $json->decode($msg);
is(join(',', sort keys %$m), 'id,key,lsn,payload,topic,xid', 'a message line has its fields');

#
# options over the replication protocol
#
my $opt_out = "$PostgreSQL::Test::Utils::tmp_check/options.jsonl";
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('opts', 'pg_cqrs')");
$node->safe_psql('postgres', "SELECT FROM cqrs.append('opt-1', 'O', '{}', '{\"m\": 1}')");
$c = start_consumer($opt_out, 'opts', 'include-metadata', 'categories=opt');
ok(wait_lines($opt_out, 1), 'a bare include-metadata is accepted');
$c->{h}->signal('TERM');
$c->{h}->finish;
like((lines_of($opt_out))[0], qr/"metadata":\{"m": 1\}/, 'a bare include-metadata means true');

my ($stdout, $stderr);
IPC::Run::run(
	[
		'pg_recvlogical', '-d', $node->connstr('postgres'), '--slot', 'opts',
		'--start', '-f', '-', '--no-loop', '-o', 'format'
	],
	'>', \$stdout, '2>', \$stderr);
like($stderr, qr/invalid value for option "format": ""/, 'a bare format is refused');

#
# a consumer that filters everything out still moves its slot on
#
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('filtered', 'pg_cqrs')");
my $filtered_out = "$PostgreSQL::Test::Utils::tmp_check/filtered.jsonl";
$c = start_consumer($filtered_out, 'filtered', 'types=NoSuchType', 'topics=none');
$node->safe_psql('postgres', $appends =~ s/'order-/'filtered-/gr);
my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
ok( $node->poll_query_until(
		'postgres',
		"SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'filtered'"),
	'a consumer that receives nothing confirms what it passed');
$c->{h}->signal('TERM');
$c->{h}->finish;
is(scalar(lines_of($filtered_out)), 0, 'and it received nothing');

$node->stop;
done_testing();
