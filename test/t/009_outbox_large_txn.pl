# test/t/009_outbox_large_txn.pl - a transaction of a million events streams
# in constant memory
#
# One transaction inserts 1,000,000 events into the log.  pg_recvlogical
# decodes it through a walsender; every event arrives, one line each, and
# the walsender's private memory (RssAnon in /proc, sampled while it
# decodes) stays within a bound that does not depend on the transaction's
# size.  logical_decoding_work_mem is at its minimum, so the reorder buffer
# spills the transaction to disk early and restores it in small pieces: any
# growth beyond that is the output plugin's.  A plugin that kept one
# allocation per event, or buffered the transaction, would need hundreds of
# megabytes here.
#
# The events are inserted with INSERT ... SELECT rather than cqrs.append:
# the decoder sees rows of cqrs.events either way, and this takes seconds
# instead of a minute.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;
use Time::HiRes qw(usleep);

plan skip_all => 'needs /proc' unless -r "/proc/$$/status";

my $n = 1_000_000;
my $limit_kb = 32 * 1024;    # RssAnon of the walsender, at any time

my $node = cqrs_node('outbox_large_txn', 'logical_decoding_work_mem = 64kB');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
$node->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_logical_replication_slot('big', 'pg_cqrs')");

$node->safe_psql(
	'postgres', qq{
	INSERT INTO cqrs.events (stream, version, id, type, data, metadata)
	SELECT 'order-' || (g % 1000), g / 1000 + 1, gen_random_uuid(), 'LineAdded',
	       jsonb_build_object('line', g, 'sku', md5(g::text), 'qty', g % 7),
	       jsonb_build_object('user', 'loader')
	  FROM generate_series(0, $n - 1) g});
my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

my ($lines, $stderr) = ('', '');
my $h = IPC::Run::start(
	[
		'pg_recvlogical', '-d', $node->connstr('postgres'), '--slot', 'big',
		'--start', '-f', '-', '--endpos', $end, '--no-loop'
	],
	'|', [ 'wc', '-l' ],
	'>', \$lines, '2>', \$stderr);

# the walsender's pid, then its memory until it exits
my $pid;
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
while (!$pid && time < $deadline)
{
	$pid = $node->safe_psql('postgres',
		"SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'big'");
	usleep(20_000) unless $pid;
}
ok($pid, 'a walsender decodes the slot');

sub rss_anon_kb
{
	open my $fh, '<', "/proc/$pid/status" or return undef;
	my ($kb) = map { /^RssAnon:\s+(\d+)/ ? $1 : () } <$fh>;
	return $kb;
}

my ($first, $peak, $samples) = (undef, 0, 0);
$deadline = time + 10 * $PostgreSQL::Test::Utils::timeout_default;
while (time < $deadline)
{
	my $kb = rss_anon_kb();
	last unless defined $kb;
	$first //= $kb;
	$peak = $kb if $kb > $peak;
	$samples++;
	usleep(100_000);
}
$h->finish;
$lines =~ s/\s+//g;

is($lines, $n, "all $n events arrived, one line each") or diag $stderr;
note "walsender RssAnon: first sample $first kB, peak $peak kB, $samples samples";
cmp_ok($samples, '>=', 5, 'memory was sampled while decoding');
cmp_ok($peak, '<', $limit_kb, "the walsender's private memory stayed below " . ($limit_kb / 1024) . ' MB');

$node->stop;
done_testing();
