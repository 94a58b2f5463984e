# test/t/018_outbox_transaction_end.pl - what a consumer may confirm, and
# the commit line that tells it when
#
# Three transactions: A (one event), B (100 events), C (one event), read
# with -o transaction-end through pg_recvlogical, whose --endpos stops it
# right after the line whose replication message starts at that LSN and
# confirms that start.  Each consumer has its own slot, stops somewhere,
# and reconnects:
#
#   - the lines and their messages: every line of a transaction carries the
#     end of its commit record; a change line's message starts at its own
#     record, before that; the commit line's message starts at the end of
#     the commit record, and it counts the lines before it;
#   - confirming a change line's lsn field mid-transaction (what the README
#     of 0.5 told consumers to do) loses the rest of the transaction on
#     reconnect: the 99 events of issue 12;
#   - confirming a change line's message start mid-transaction (what
#     pg_recvlogical does) loses nothing: the whole transaction comes again,
#     and exactly its lines already seen repeat;
#   - confirming the commit line (its lsn or its message start, the same)
#     loses nothing and repeats nothing;
#   - cqrs.outbox_status.lag_events for a consumer 60 transactions behind
#     its decoder is known, and not less than the truth.

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

my $node = cqrs_node('outbox_transaction_end', 'max_replication_slots = 10',
	'wal_sender_timeout = 10s');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
for my $slot (qw(peek field mid commit far))
{
	$node->safe_psql('postgres',
		"SELECT 'init' FROM pg_create_logical_replication_slot('$slot', 'pg_cqrs')");
}
my $json = JSON::PP->new;

$node->safe_psql('postgres', "SELECT FROM cqrs.append('a-1', 'A', '{}')");
$node->safe_psql('postgres',
	"SELECT FROM cqrs.append_events('b-1', (SELECT jsonb_agg(jsonb_build_object('type', 'B', 'data', jsonb_build_object('k', k))) FROM generate_series(1, 100) k))"
);
$node->safe_psql('postgres', "SELECT FROM cqrs.append('c-1', 'C', '{}')");
my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

# every line with the LSN its message starts at, as a walsender sends it
# (the lsn column of the SQL functions is the same write location)
my @rows = map { my ($lsn, $data) = split /\|/, $_, 2; { at => $lsn, line => $data, o => $json->decode($data) } }
  split /\n/,
  $node->safe_psql('postgres',
	"SELECT lsn, data FROM pg_logical_slot_peek_changes('peek', NULL, NULL, 'transaction-end', 'true')");
is(scalar(@rows), 105, '102 event lines and 3 commit lines');
my @commits = grep { $_->{o}{commit} } @rows;
is(join(',', map { $_->{o}{commit}{lines} } @commits), '1,100,1', 'each commit line counts its lines');
is(scalar(grep { $_->{o}{commit}{lsn} eq $_->{at} } @commits), 3,
	"a commit line's message starts at its lsn");
my @b = grep { ($_->{o}{stream} // '') eq 'b-1' } @rows;
my $b_end = $commits[1]{o}{commit}{lsn};
is(scalar(grep { $_->{o}{lsn} eq $b_end && $_->{o}{xid} == $commits[1]{o}{commit}{xid} } @b), 100,
	'the 100 lines of B carry the lsn and xid of its commit line');
is(scalar(grep { lsn_cmp($b[$_]{at}, $b[ $_ + 1 ]{at}) < 0 } 0 .. 98), 99,
	"B's messages start at increasing LSNs");
ok(lsn_cmp($b[99]{at}, $b_end) < 0, "all before the end of B's commit record");

sub lsn_cmp
{
	my ($x, $y) = map { my ($hi, $lo) = split m{/}, $_; hex($hi) * 2**32 + hex($lo) } @_;
	return $x <=> $y;
}

# pg_recvlogical up to a message start: its lines, and what it confirmed
sub consume
{
	my ($slot, $endpos) = @_;
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run(
		[
			'pg_recvlogical', '-d', $node->connstr('postgres'),
			'--slot', $slot, '--start', '-f', '-', '--no-loop',
			'--endpos', $endpos, '-o', 'transaction-end'
		],
		'>', \$stdout, '2>', \$stderr,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	my $confirmed = $node->safe_psql('postgres',
		"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$slot'");
	return ([ grep { $_ ne '' } split /\n/, $stdout ], $confirmed);
}

sub ids
{
	return map { $json->decode($_)->{id} // () } @_;
}

my %all_ids = map { $_ => 1 } split /\n/, $node->safe_psql('postgres', 'SELECT id FROM cqrs.events');
is(scalar(keys %all_ids), 102, '102 events in the log');

# what a consumer that saw @first and then @second lost and saw twice
sub tally
{
	my ($first, $second) = @_;
	my %seen;
	$seen{$_}++ for ids(@$first), ids(@$second);
	my $lost = grep { !$seen{$_} } keys %all_ids;
	my $twice = grep { $seen{$_} > 1 } keys %seen;
	return ($lost, $twice);
}

#
# the lsn field of B's first line, confirmed after processing that line
#
my ($first, $confirmed) = consume('field', $b[0]{at});
is(scalar(@$first), 3, 'the consumer stopped after the first line of B');
is($json->decode($first->[-1])->{id}, $b[0]{o}{id}, 'which is B\'s first event');
$node->safe_psql('postgres',
	"SELECT FROM pg_replication_slot_advance('field', '" . $json->decode($first->[-1])->{lsn} . "')");
my ($second) = consume('field', $end);
my ($lost, $twice) = tally($first, $second);
is($lost, 99, "confirming a change line's lsn mid-transaction loses the other 99 events of B");
is($twice, 0, 'and repeats nothing');

#
# the message start of B's 50th line, as pg_recvlogical confirms it
#
($first, $confirmed) = consume('mid', $b[49]{at});
is(scalar(@$first), 52, 'the consumer stopped after the 50th line of B');
is($confirmed, $b[49]{at}, 'and confirmed the start of that line\'s message');
($second) = consume('mid', $end);
($lost, $twice) = tally($first, $second);
is($lost, 0, "confirming a change line's message start mid-transaction loses nothing");
is($twice, 50, 'B comes again whole: the 50 lines seen before repeat');
is(scalar(grep { $json->decode($_)->{commit} } @$second), 2, 'B and C end with their commit lines');

#
# the commit line of B
#
($first, $confirmed) = consume('commit', $b_end);
is(scalar(@$first), 103, 'the consumer stopped after the commit line of B');
ok($json->decode($first->[-1])->{commit}, 'the last line is the commit line');
is($confirmed, $b_end, 'and confirmed its lsn, the start of its message');
($second) = consume('commit', $end);
($lost, $twice) = tally($first, $second);
is($lost, 0, 'confirming the commit line loses nothing');
is($twice, 0, 'and repeats nothing');
is(scalar(@$second), 2, 'only C follows, with its commit line');

#
# lag_events for a consumer far behind its decoder: the decoder has seen
# 100 more transactions (a peek: nothing confirmed), the consumer confirms
# the 40th of them; 0.5 kept 32 (LSN, position) pairs and lost the ones it
# could have answered with
#
consume('far', $end);
$node->safe_psql('postgres', join('', map { "SELECT FROM cqrs.append('far-$_', 'F', '{}');\n" } 1 .. 100));
my @far = grep { $_->{o}{commit} } map { { o => $json->decode($_) } } split /\n/,
  $node->safe_psql('postgres',
	"SELECT data FROM pg_logical_slot_peek_changes('far', NULL, NULL, 'transaction-end', 'true')");
is(scalar(@far), 100, '100 transactions decoded, none confirmed');
for my $n (40, 90)
{
	consume('far', $far[ $n - 1 ]{o}{commit}{lsn});
	my $lag = $node->safe_psql('postgres',
		"SELECT coalesce(lag_events::text, 'NULL') FROM cqrs.outbox_status WHERE name = 'far'");
	my $truth = 100 - $n;
	note "confirmed through the ${n}th transaction: lag_events $lag, truly $truth";
	ok($lag ne 'NULL' && $lag >= $truth && $lag <= $truth + 10,
		"lag_events is known and close above the truth after $n of 100 ($lag >= $truth)");
}
consume('far', $far[99]{o}{commit}{lsn});
is($node->safe_psql('postgres', "SELECT lag_events FROM cqrs.outbox_status WHERE name = 'far'"),
	'0', 'and 0 once everything is confirmed');

$node->stop;
done_testing();
