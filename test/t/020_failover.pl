# test/t/020_failover.pl - promoting a synchronous standby while appends run
#
# With synchronous replication (synchronous_standby_names naming the
# standby, synchronous_commit = on), an append acknowledged to its client
# is on the standby.  Four clients append; the primary is stopped in
# immediate mode in the middle; the standby is promoted.  On the new
# primary:
#   - every acknowledged append is there, with the position, id and
#     version its client was given;
#   - read_all returns the whole log, in position order;
#   - the sync projection's read table matches the log (verify), the
#     deferred projection catches up by itself and matches too;
#   - new appends take positions above every acknowledged one.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $primary = cqrs_node('primary', 'synchronous_commit = on');
cqrs_counting_projections($primary);
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cluster_name = 'standby'");
$standby->start;
$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'standby'");
$primary->reload;
# application_name defaults to cluster_name: the standby is synchronous
$primary->poll_query_until('postgres',
	q{SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'standby'})
  or die 'the standby did not become synchronous';

# four clients, each a psql running appends one statement at a time: a
# line printed is an acknowledged commit
my @clients;
for my $c (1 .. 4)
{
	my $file = $primary->basedir . "/client$c.sql";
	PostgreSQL::Test::Utils::append_to_file($file,
		join('', map {
			my $s = $_ % 20;
			my $id = sprintf('00000000-0000-4000-8000-%04d%08d', $c, $_);
			"SELECT position, '$id', version, 'order-$c-$s' FROM cqrs.append('order-$c-$s', 'Changed', '{}', id => '$id');\n"
		} 1 .. 20000));
	my $out = '';
	my $err = '';
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $primary->connstr('postgres'), '-f', $file ],
		'>', \$out, '2>', \$err);
	push @clients, { h => $h, out => \$out, err => \$err };
}
my $acked = 0;
for (1 .. 600)
{
	$_->{h}->pumpable and $_->{h}->pump_nb for @clients;
	$acked = 0;
	$acked += () = ${ $_->{out} } =~ /\n/g for @clients;
	last if $acked >= 400;
	usleep(50_000);
}
cmp_ok($acked, '>=', 400, "the clients had $acked appends acknowledged before the crash");
$primary->stop('immediate');
for my $c (@clients)
{
	eval { $c->{h}->finish };
}
my %acked;
for my $c (@clients)
{
	for my $line (split /\n/, ${ $c->{out} })
	{
		my ($position, $id, $version, $stream) = split /\|/, $line;
		$acked{$id} = "$position|$version|$stream";
	}
}
my $clients_failed = grep { ${ $_->{err} } =~ /terminat|connection|server closed/ } @clients;
is($clients_failed, 4, 'every client was cut off by the crash');

$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'promotion did not finish';

my %found = map { my ($id, $rest) = split /\|/, $_, 2; ($id => $rest) }
  split /\n/, $standby->safe_psql('postgres',
	q{SELECT id || '|' || position || '|' || version || '|' || stream FROM cqrs.events});
my @lost = grep { !defined $found{$_} } keys %acked;
my @changed = grep { defined $found{$_} && $found{$_} ne $acked{$_} } keys %acked;
is(scalar(@lost), 0, scalar(keys %acked) . ' acknowledged appends, none lost on the new primary');
is(scalar(@changed), 0, 'each with the position, version and stream its client was given');
is($standby->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT stream, version,
	         row_number() OVER (PARTITION BY stream ORDER BY version) AS n
	    FROM cqrs.events) v WHERE version <> n}),
	'0', 'every stream is numbered without gaps');
is($standby->safe_psql('postgres', q{
	SELECT (SELECT array_agg(position ORDER BY position) FROM cqrs.read_all(0, 1000000))
	     = (SELECT array_agg(position ORDER BY position) FROM cqrs.events)}),
	't', 'read_all on the new primary returns the whole log');
is($standby->safe_psql('postgres', q{SELECT matches FROM cqrs.verify('sync_counts')}),
	't', 'the sync projection matches the log');

my $max_acked = 0;
for (values %acked) { my ($p) = split /\|/; $max_acked = $p if $p > $max_acked }
my $new = $standby->safe_psql('postgres',
	q{SELECT position FROM cqrs.append('order-new', 'Placed', '{}')});
cmp_ok($new, '>', $max_acked, 'a new append takes a position above every acknowledged one');
is($standby->safe_psql('postgres',
		"SELECT cqrs.wait_for_projection('deferred_counts', $new, '60 s')"),
	't', 'the deferred projection catches up on the new primary by itself');
is($standby->safe_psql('postgres', q{SELECT matches FROM cqrs.verify('deferred_counts')}),
	't', 'and matches the log: each event applied once');

$standby->stop;
done_testing();
