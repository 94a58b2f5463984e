# test/t/019_standby_reads.pl - reading the log by position on a hot standby
#
# The primary writes its appenders' floors to WAL (src/standby.c), so that
# on a streaming standby:
#   - read_all and safe_position stop below an append still open on the
#     primary, even when later positions have committed;
#   - a consumer polling read_all on the standby while several clients
#     append on the primary, committing out of position order, never
#     skips an event;
#   - a standby restarted while an append is open refuses (55000) until
#     the primary's next scan of all floors reaches it, then holds back;
#   - projection_status and wait_for_projection work there, for sync and
#     deferred projections.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $primary = cqrs_node('primary', 'max_connections = 30');
cqrs_counting_projections($primary);
# a role that may use the schema but not read the log
$primary->safe_psql('postgres',
	'CREATE ROLE stranger LOGIN; GRANT USAGE ON SCHEMA cqrs TO stranger');
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

my $a1 = $primary->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-1', 'Placed', '{}')});
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
is($standby->safe_psql('postgres', 'SELECT cqrs.safe_position()'),
	$a1, 'on the standby, safe_position reaches the last committed event');
is($standby->safe_psql('postgres',
		'SELECT string_agg(position::text, \',\') FROM cqrs.read_all(0)'),
	$a1, 'and read_all returns it');

# on the standby, the same privilege checks as on the primary
my ($src, $sout, $serr) = $standby->psql('postgres',
	'SELECT count(*) FROM cqrs.read_all(0)',
	extra_params => [ '-U', 'stranger', '-v', 'VERBOSITY=verbose' ]);
like($serr, qr/42501/, 'a role without SELECT on cqrs.events cannot read_all on the standby');
($src, $sout, $serr) = $standby->psql('postgres', 'SELECT cqrs.safe_position()',
	extra_params => [ '-U', 'stranger', '-v', 'VERBOSITY=verbose' ]);
like($serr, qr/42501/, 'nor ask for the safe position there');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM cqrs.projection_status',
		extra_params => [ '-U', 'stranger' ]),
	'0', 'and sees no projection in projection_status');

# an append left open on the primary holds the standby back
my $open = $primary->background_psql('postgres');
my $held = $open->query_safe(
	q{BEGIN; SELECT position FROM cqrs.append('order-2', 'Placed', '{}')});
$held =~ s/\s+//g;
my $later = $primary->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-3', 'Placed', '{}')});
ok($later > $held, "a later append ($later) commits before the open one ($held)");
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM cqrs.events WHERE position = $later"),
	'1', 'the later event has reached the standby');
cmp_ok($standby->safe_psql('postgres', 'SELECT cqrs.safe_position()'),
	'<', $held, 'the standby\'s safe position stays below the open append');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM cqrs.read_all($a1)"),
	'0', 'read_all on the standby does not return the later event yet');
$open->query_safe('COMMIT');
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
is($standby->safe_psql('postgres',
		"SELECT string_agg(position::text, ',' ORDER BY position) FROM cqrs.read_all($a1)"),
	"$held,$later", 'once it commits, read_all returns both, in order');

# many appenders committing out of order, a consumer on the standby
my $script = $primary->basedir . '/append.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
\set s random(1, 200)
BEGIN;
SELECT cqrs.append('order-' || :s, 'Changed', '{}');
SELECT pg_sleep(random() * 0.004);
SELECT cqrs.append('customer-' || :s, 'Changed', '{}');
COMMIT;
});
# The load runs in the background; the consumer polls read_all on the
# standby from its checkpoint, one statement at a time as an application
# would (a single long statement would hold replay back), until the load
# is over and replay has caught up.
my ($bench_out, $bench_err) = ('', '');
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '6', '-j', '2', '-T', '8', '-f', $script,
	  $primary->connstr('postgres') ],
	'>', \$bench_out, '2>', \$bench_err);
my $reader = $standby->background_psql('postgres');
my $load_ends = time + 8;
my ($checkpoint, $polls, $nonempty, $caught_up) = (0, 0, 0, 0);
my @seen;
my $bench_ok;
while (1)
{
	my $got = $reader->query_safe(
		"SELECT string_agg(position::text, ',' ORDER BY position) FROM cqrs.read_all($checkpoint, 1000)");
	$got =~ s/\s+//g;
	$polls++;
	if ($got ne '')
	{
		$nonempty++;
		my @batch = split /,/, $got;
		push @seen, @batch;
		$checkpoint = $batch[-1];
		next;
	}
	last if $caught_up;
	if (time > $load_ends)
	{
		$bench_ok = $bench->finish;
		$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
		$caught_up = 1;    # one more empty read after this and we are done
	}
}
$reader->quit;
ok($bench_ok, 'pgbench: six clients appended two events per transaction for 8 s')
  or diag($bench_err);
my $all = $primary->safe_psql('postgres',
	'SELECT array_to_string(array_agg(position ORDER BY position), \',\') FROM cqrs.events');
my @all = split /,/, $all;
my %in_seen = map { $_ => 1 } @seen;
my @skipped = grep { !$in_seen{$_} } @all;
cmp_ok(scalar(@all), '>', 1000, scalar(@all) . ' events appended');
is_deeply(\@seen, \@all,
	"the standby consumer read the whole log, each event once, in order ($polls polls, $nonempty non-empty)")
  or diag('skipped: ' . join(',', @skipped[0 .. ($#skipped < 20 ? $#skipped : 20)]));
is($standby->safe_psql('postgres',
		'SELECT array_to_string(array_agg(position ORDER BY position), \',\') FROM cqrs.read_all(0, 1000000)'),
	$all, 'read_all on the caught-up standby returns the whole log');

# projections on the standby
$primary->safe_psql('postgres', "SELECT cqrs.wait_for_projection('deferred_counts', $all[-1], '60 s')");
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
is($standby->safe_psql('postgres',
		'SELECT string_agg(name || \':\' || (position IS NOT NULL)::text, \',\' ORDER BY name) FROM cqrs.projection_status'),
	'deferred_counts:true,sync_counts:true', 'projection_status on the standby has both positions');
# Waits on the standby that start before the append they wait for: the
# time from the append's recorded_at to each wait's return
my $next = $primary->safe_psql('postgres', 'SELECT max(position) + 1 FROM cqrs.events');
my %waiter;
for my $p ('sync_counts', 'deferred_counts')
{
	my $out = '';
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $standby->connstr('postgres'), '-c',
		  "SELECT cqrs.wait_for_projection('$p', $next, '30 s'), clock_timestamp()" ],
		'>', \$out, '2>', \$out);
	$waiter{$p} = [ $h, \$out ];
}
sleep(1);
my $last = $primary->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-9999', 'Placed', '{}')});
my $appended_at = $primary->safe_psql('postgres',
	"SELECT recorded_at FROM cqrs.events WHERE position = $last");
cmp_ok($last, '>=', $next, 'the awaited append');
my %lag_ms;
for my $p ('sync_counts', 'deferred_counts')
{
	$waiter{$p}[0]->finish;
	my ($done, $at) = split /\|/, ${ $waiter{$p}[1] };
	chomp $at;
	is($done, 't', "wait_for_projection('$p') on the standby returns true");
	$lag_ms{$p} = $primary->safe_psql('postgres',
		"SELECT round(extract(epoch FROM '$at'::timestamptz - '$appended_at'::timestamptz) * 1000, 1)");
}
note("from the append on the primary to the wait's return on the standby: "
	  . "sync $lag_ms{sync_counts} ms, deferred $lag_ms{deferred_counts} ms");
cmp_ok($lag_ms{sync_counts}, '<', 1000, 'the sync wait returns within a second of the append');
is($standby->safe_psql('postgres', q{SELECT n FROM dcounts WHERE stream = 'order-9999'}),
	'1', 'the deferred read table on the standby has the event');

# a standby restarted while an append is open on the primary
$open->query_safe(q{BEGIN; SELECT cqrs.append('order-10', 'Placed', '{}')});
$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
$standby->safe_psql('postgres', 'CHECKPOINT');    # a restartpoint after the open FLOOR record
$standby->restart;
my ($rc, $out, $err) = $standby->psql('postgres', 'SELECT cqrs.safe_position()');
like($err, qr/cannot compute a safe read position yet/,
	'restarted past an open append\'s floor, the standby refuses to guess');
($rc, $out, $err) = $standby->psql('postgres', 'SELECT count(*) FROM cqrs.read_all(0)',
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000/, 'read_all too, with SQLSTATE 55000');
is($standby->safe_psql('postgres',
		q{SELECT position IS NULL FROM cqrs.projection_status WHERE name = 'sync_counts'}),
	't', 'projection_status shows an unknown sync position as NULL');
# another append, a second later, logs every open floor
sleep(1.1);
my $after = $primary->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-11', 'Placed', '{}')});
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
my $safe = $standby->safe_psql('postgres', 'SELECT cqrs.safe_position()');
cmp_ok($safe, '<', $after,
	'after the primary logged all floors, the standby answers, held back by the open append');
$open->query_safe('COMMIT');
$open->quit;
$primary->wait_for_catchup($standby, "replay", $primary->lsn("insert"));
is($standby->safe_psql('postgres', 'SELECT cqrs.safe_position()'),
	$after, 'and moves on once it commits');

# cqrs.wal_rmgr_id is fixed at server start and checked
($rc, $out, $err) = $primary->psql('postgres', 'SET cqrs.wal_rmgr_id = 129');
like($err, qr/cannot be changed without restarting the server/, 'cqrs.wal_rmgr_id needs a restart');

$standby->stop;
$primary->stop;
done_testing();
