# test/t/001_durability.pl - acknowledged events survive an immediate shutdown
#
# Four psql clients append (single events, batches, two streams in one
# statement) to private and shared streams as fast as they can.  While they
# run, the server is stopped with "immediate" (no shutdown checkpoint: every
# commit must come back from WAL replay) and restarted.  Then:
#   - every event a client was told about (a result row printed by psql,
#     i.e. after its commit returned) is in the log, at the stream, version
#     and position the client was given, and every event of an acknowledged
#     batch is there;
#   - versions are 1..n without gaps in every stream, and stream_version
#     agrees;
#   - read_all, paged, returns the whole log in position order (no horizon
#     left behind by the transactions the crash cut off);
#   - a new append continues the stream and gets a position above all old
#     ones, and read_all returns it.
# fsync stays off (PostgreSQL::Test::Cluster's default): an immediate stop
# kills processes, not the kernel, so what was written is not lost; what is
# tested is that a commit was only acknowledged once it was in the WAL.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;
use IPC::Run;

my $clients = 4;
my $statements = 6000;    # per client; far more than run before the stop
my $stop_at = 2000;       # committed events before the immediate stop

my $node = cqrs_node('durability');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');

# The clients' scripts.  Each result row is "id|stream|version|position" of
# the last event the statement appended.
my %batches;    # last id of a batch => [ids in order]
sub uuid { sprintf('%08x-0000-4000-8000-%012x', $_[0], $_[1]) }

my @runs;
for my $c (1 .. $clients)
{
	my $script = "$PostgreSQL::Test::Utils::tmp_check/client_$c.sql";
	open my $fh, '>', $script or die "could not write $script: $!";
	for my $i (1 .. $statements)
	{
		my $own = "client$c-" . ($i % 7);
		my $shared = 'shared-' . ($i % 3);
		my $stream = ($i % 2) ? $own : $shared;
		my $id = uuid($c, $i * 10);
		if ($i % 10 == 0)
		{
			my @ids = map { uuid($c, $i * 10 + $_) } 1 .. 3;
			$batches{ $ids[-1] } = \@ids;
			my $events = join(', ',
				map { qq({"type": "Batched", "data": {"c": $c, "i": $i}, "id": "$_"}) }
				  @ids);
			print $fh "SELECT '$ids[-1]', '$stream', version, position "
			  . "FROM cqrs.append_events('$stream', '[$events]');\n";
		}
		elsif ($i % 10 == 5)
		{
			# two streams, one statement, one transaction: private first,
			# so that two clients never lock two shared streams
			my $id2 = uuid($c, $i * 10 + 1);
			print $fh "SELECT x.* FROM (SELECT '$id', '$own', version, position "
			  . "FROM cqrs.append('$own', 'Paired', '{\"i\": $i}', id => '$id') "
			  . "UNION ALL SELECT '$id2', '$shared', version, position "
			  . "FROM cqrs.append('$shared', 'Paired', '{\"i\": $i}', "
			  . "'{\"client\": $c}', id => '$id2')) x;\n";
		}
		else
		{
			print $fh "SELECT '$id', '$stream', version, position "
			  . "FROM cqrs.append('$stream', 'Ticked', '{\"i\": $i}', id => '$id');\n";
		}
	}
	close $fh;

	# Output goes to files: nobody reads a pipe while the clients run.
	my ($out, $err) = ("$script.out", "$script.err");
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-f', $script
		],
		'>', $out, '2>', $err);
	push @runs, { h => $h, out => $out, err => $err };
}

# Let them run, then pull the plug.
unless ($node->poll_query_until('postgres',
		"SELECT count(*) >= $stop_at FROM cqrs.events"))
{
	diag "client $_: " . slurp_file($runs[ $_ - 1 ]{err}) for 1 .. $clients;
	die "the clients did not append $stop_at events";
}
$node->stop('immediate');

my (%acked, $still_running);
for my $r (@runs)
{
	$r->{h}->finish;    # psql exits with an error: the server went away
	$still_running++ if $r->{h}->result != 0;
	for my $line (split /\n/, slurp_file($r->{out}))
	{
		my ($id, $stream, $version, $position) = split /\|/, $line;
		$acked{$id} = [ $stream, $version, $position ];
	}
	like(slurp_file($r->{err}), qr/server closed the connection|terminating connection|connection to server/,
		'a client was cut off by the shutdown')
	  if $r->{h}->result != 0;
}
note scalar(keys %acked) . " acknowledged statements, "
  . ($still_running // 0) . " clients cut off";
cmp_ok(scalar(keys %acked), '>', 100, 'clients were acknowledged appends before the stop');

$node->start;

# Everything acknowledged is there, where the client was told.
my %log;
for my $line (split /\n/,
	$node->safe_psql('postgres', 'SELECT id, stream, version, position FROM cqrs.events'))
{
	my ($id, @rest) = split /\|/, $line;
	$log{$id} = \@rest;
}
my @lost = grep { !$log{$_} } sort keys %acked;
my @moved = grep { $log{$_} && join('|', @{ $log{$_} }) ne join('|', @{ $acked{$_} }) }
  sort keys %acked;
is(scalar(@lost), 0, 'no acknowledged event was lost')
  or diag "lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]";
is(scalar(@moved), 0, 'acknowledged events are at the version and position returned')
  or diag "moved: @moved[0 .. ($#moved < 9 ? $#moved : 9)]";

# Every event of an acknowledged batch, in order.
my $broken = 0;
for my $last (grep { $batches{$_} } keys %acked)
{
	my ($stream, $version) = @{ $acked{$last} };
	my @ids = @{ $batches{$last} };
	for my $k (0 .. 2)
	{
		my $e = $log{ $ids[$k] };
		$broken++
		  unless $e && $e->[0] eq $stream && $e->[1] == $version - 2 + $k;
	}
}
is($broken, 0, 'acknowledged batches are complete and consecutive');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT stream FROM cqrs.events GROUP BY stream
	  HAVING min(version) <> 1 OR max(version) <> count(*)
	      OR max(version) <> cqrs.stream_version(stream)) s}),
	'0',
	'versions are gapless in every stream and stream_version agrees');

# read_all returns the whole log, in position order, page by page.
my $all = $node->safe_psql('postgres',
	'SELECT string_agg(position::text, \',\' ORDER BY position) FROM cqrs.events');
my ($after, @read) = (0);
while (1)
{
	my $page = $node->safe_psql('postgres',
		"SELECT position FROM cqrs.read_all($after, 1000)");
	last if $page eq '';
	my @p = split /\n/, $page;
	push @read, @p;
	$after = $p[-1];
}
is(join(',', @read), $all, 'read_all after restart returns every event in position order');

# A new append continues the stream, above every old position.
my ($max_pos, $shared_version) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT max(position), cqrs.stream_version('shared-0') FROM cqrs.events");
my ($v, $p) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT version, position FROM cqrs.append('shared-0', 'AfterRestart', '{}')");
is($v, $shared_version + 1, 'a new append continues the stream');
cmp_ok($p, '>', $max_pos, 'a new append gets a position above all old ones');
is( $node->safe_psql('postgres',
		"SELECT string_agg(stream || ':' || version, ',') FROM cqrs.read_all($max_pos)"),
	"shared-0:$v",
	'read_all returns the new append');

$node->stop;
done_testing();
