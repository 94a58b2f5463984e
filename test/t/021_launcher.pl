# test/t/021_launcher.pl - the launcher wakes only the database that asked,
# backs off failed starts, and DROP DATABASE with a deferred projection
#
# Part 1: 29 databases, each with a running deferred projection, and
# max_worker_processes = 8, so most databases wait for a worker slot.  Many
# wakes and appends in every database.  Before 0.6.0 every wake (and every
# worker exit) retried every database at once: thousands of "could not
# start a worker" warnings.  Now failed starts back off and the warning
# comes at most once a minute per database.  Idle workers give their slot
# up while a database waits for one, so every event in every database is
# applied in the end, and an append in a database whose worker left brings
# it back (the wake is not lost).
#
# Part 2: a wake of one database starts that database's worker and no
# other (the postmaster logs each start at DEBUG1).
#
# Part 3: DROP DATABASE while a deferred projection's worker is connected:
# plain DROP fails, WITH (FORCE) works for a superuser and for a
# non-superuser owner only with pg_signal_backend, pausing first works.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use CqrsNode;

my $ndb = 29;
my $setup = q{
CREATE EXTENSION pg_cqrs;
CREATE TABLE seen ("position" bigint PRIMARY KEY);
CREATE FUNCTION project(e cqrs.events) RETURNS void LANGUAGE sql AS $$
  INSERT INTO seen VALUES (e."position")
$$;
SELECT cqrs.create_projection('seen', 'project', 'deferred', '{seen}');
};

# ---------------------------------------------------------------- part 1

my $node = cqrs_node('launcher', 'max_worker_processes = 8',
	'cqrs.naptime = 500ms');
my $t0 = time;
my @dbs = map { sprintf('db%02d', $_) } 1 .. $ndb;
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $setup);
}

# 10 rounds: in each, one append in every database, and five launcher
# wakes (as the install script and resume_projection make): 50 wakes
for my $round (1 .. 10)
{
	for my $db (@dbs)
	{
		$node->safe_psql($db, "SELECT cqrs.append('s-$round', 'E', '{}')");
	}
	$node->safe_psql($dbs[($round * 5 + $_) % $ndb], 'SELECT cqrs.wake_launcher()')
	  for 1 .. 5;
}
my $t1 = time;

# every event of every database is applied, eventually
for my $db (@dbs)
{
	ok( $node->poll_query_until(
			$db, q{SELECT (SELECT count(*) FROM seen) = (SELECT count(*) FROM cqrs.events)}),
		"every event is applied in $db");
}
my $elapsed = time - $t0;
note sprintf('all applied %.1f s after the last append', time - $t1);

my $log = slurp_file($node->logfile);
my $warnings = () = $log =~ /could not start a worker for database/g;
my $bound = $ndb * (1 + int($elapsed / 60) + 1);
note sprintf('%d "could not start a worker" warnings in %.0f s (bound %d)',
	$warnings, $elapsed, $bound);
diag sprintf('launcher: %d "could not start a worker" warnings in %.0f s, %d databases',
	$warnings, $elapsed, $ndb);
cmp_ok($warnings, '>', 0, 'some worker starts failed (more databases than slots)');
cmp_ok($warnings, '<=', $bound, 'the warnings are bounded');
my %per_db;
$per_db{$1}++ while $log =~ /could not start a worker for database (\d+)/g;
my ($most) = sort { $b <=> $a } values %per_db;
cmp_ok($most // 0, '<=', 1 + int($elapsed / 60),
	'the warning is logged at most once a minute per database');

# a database whose worker is not connected now: an append there brings one
my $connected = $node->safe_psql('postgres',
	q{SELECT string_agg(datname, ' ') FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker'});
my %connected = map { $_ => 1 } split / /, $connected;
my ($idle) = grep { !$connected{$_} } @dbs;
ok(defined $idle, "some database has no worker now (connected: $connected)");
my $pos = $node->safe_psql($idle, q{SELECT position FROM cqrs.append('late-1', 'E', '{}')});
is($node->safe_psql($idle, "SELECT cqrs.wait_for_projection('seen', $pos, '30 s')"),
	't', "an append in $idle, which had no worker, is applied");

$node->stop;

# ---------------------------------------------------------------- part 2

my $small = cqrs_node('wake_one', 'log_min_messages = debug1');
for my $db (qw(a b c))
{
	$small->safe_psql('postgres', "CREATE DATABASE $db");
	$small->safe_psql($db, $setup . q{SELECT cqrs.pause_projection('seen');});
}
# with their projections paused, the workers leave
$small->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker'})
  or die 'workers did not leave';
sleep 1;

my %oid;
$oid{$_} = $small->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = '$_'")
  for qw(postgres a b c);
my $offset = -s $small->logfile;
$small->safe_psql('a', 'SELECT cqrs.wake_launcher()') for 1 .. 10;
sleep 2;
my $after = substr(slurp_file($small->logfile), $offset);
my %starts;
$starts{$_} = () = $after =~ /starting background worker process "pg_cqrs worker for database $oid{$_}"/g
  for qw(postgres a b c);
cmp_ok($starts{a}, '>=', 1, 'a wake in database a starts its worker');
is($starts{b} + $starts{c} + $starts{postgres}, 0,
	'and no other database\'s worker');

# ---------------------------------------------------------------- part 3

# a running deferred projection keeps its worker connected
$small->safe_psql('c', q{SELECT cqrs.resume_projection('seen')});
$small->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker' AND datname = 'c'})
  or die 'no worker in c';

my ($ret, $stdout, $stderr) = $small->psql('postgres', 'DROP DATABASE c');
isnt($ret, 0, 'plain DROP DATABASE fails while the worker is connected');
like($stderr, qr/database "c" is being accessed by other users/, '... being accessed');

# pausing first: the worker leaves, and DROP DATABASE waits for it
$small->safe_psql('c',
	q{SELECT cqrs.pause_projection(name) FROM cqrs.projections WHERE mode = 'deferred' AND state = 'running'});
($ret, $stdout, $stderr) = $small->psql('postgres', 'DROP DATABASE c');
is($ret, 0, 'after pausing its projections, DROP DATABASE works') or diag $stderr;

# WITH (FORCE), as a superuser
$small->safe_psql('postgres', 'CREATE DATABASE d');
$small->safe_psql('d', $setup);
$small->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker' AND datname = 'd'})
  or die 'no worker in d';
($ret, $stdout, $stderr) = $small->psql('postgres', 'DROP DATABASE d WITH (FORCE)');
is($ret, 0, 'DROP DATABASE WITH (FORCE) works for a superuser') or diag $stderr;

# WITH (FORCE), as the database's owner without superuser
$small->safe_psql('postgres', q{CREATE ROLE owner LOGIN CREATEDB; CREATE DATABASE e OWNER owner});
$small->safe_psql('e', $setup);
$small->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cqrs worker' AND datname = 'e'})
  or die 'no worker in e';
($ret, $stdout, $stderr) = $small->psql('postgres', 'SET ROLE owner; DROP DATABASE e WITH (FORCE)');
isnt($ret, 0, 'WITH (FORCE) by an owner that is not a superuser fails ...');
like($stderr, qr/permission denied|must be a member/, '... for want of pg_signal_backend');
note $stderr;
$small->safe_psql('postgres', 'GRANT pg_signal_backend TO owner');
($ret, $stdout, $stderr) = $small->psql('postgres', 'SET ROLE owner; DROP DATABASE e WITH (FORCE)');
is($ret, 0, 'with pg_signal_backend it works') or diag $stderr;

$small->stop;
done_testing();
