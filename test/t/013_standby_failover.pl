# test/t/013_standby_failover.pl - the outbox and a physical standby, on the
# PostgreSQL versions that let logical decoding go there
#
#   - PostgreSQL 16 and later: a pg_cqrs slot created on a hot standby
#     decodes the events and the cqrs.publish() messages appended on the
#     primary, as the primary's own slot would, and cqrs.outbox_status
#     works on the standby;
#   - PostgreSQL 17 and later: a slot created with failover => true is
#     synchronised to the standby (sync_replication_slots) and, after the
#     standby is promoted, its consumer goes on from where it confirmed:
#     nothing confirmed comes again, nothing unconfirmed is lost.
#
# On 15 the whole file is skipped: neither exists there (README, "Versions").

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

my $primary = cqrs_node('primary', 'hot_standby_feedback = on',
	'max_replication_slots = 8', 'max_wal_senders = 8');
my $version = $primary->safe_psql('postgres', 'SHOW server_version_num');
if ($version < 160000)
{
	$primary->stop;
	plan skip_all => 'logical decoding on a standby needs PostgreSQL 16 or later';
}
my $failover = $version >= 170000;

$primary->safe_psql('postgres', 'CREATE EXTENSION pg_cqrs');
$primary->safe_psql('postgres',
	"SELECT 'init' FROM pg_create_physical_replication_slot('standby1')");
if ($failover)
{
	# A failover slot must not confirm what the standby has not received.
	$primary->append_conf('postgresql.conf',
		"synchronized_standby_slots = 'standby1'");
	$primary->reload;
	$primary->safe_psql('postgres',
		"SELECT 'init' FROM pg_create_logical_replication_slot('outbox', 'pg_cqrs',"
		  . " false, false, true)");
}

# the slot sync worker needs a database in the connection string
(my $conninfo = $primary->connstr('postgres')) =~ s/'/''/g;
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	join("\n",
		"primary_slot_name = 'standby1'",
		"primary_conninfo = '$conninfo'",
		# synchronized_standby_slots is copied from the primary: once
		# promoted, there is no standby1 slot to wait for
		($failover
			? ('sync_replication_slots = on', "synchronized_standby_slots = ''")
			: ()))
	  . "\n");
$standby->start;
$primary->wait_for_replay_catchup($standby);

my $json = JSON::PP->new;

# the JSON lines a slot gives, as "stream/version" or "topic:message"
sub changes
{
	my ($node, $slot) = @_;
	my @out;
	for my $line (split /\n/,
		$node->safe_psql('postgres',
			"SELECT data FROM pg_logical_slot_get_changes('$slot', NULL, NULL)"))
	{
		my $o = $json->decode($line);
		push @out,
		  defined $o->{topic}
		  ? "$o->{topic}:" . $json->canonical->encode($o->{payload})
		  : "$o->{stream}/$o->{version}";
	}
	return join(' ', @out);
}

# ------------------------------------------------------------ on a standby
# Creating a logical slot on a standby waits for a running-transactions
# record from the primary; pg_log_standby_snapshot() writes one at once.
my ($out, $err) = ('', '');
my $create = IPC::Run::start(
	[
		'pg_recvlogical', '-d', $standby->connstr('postgres'),
		'-P', 'pg_cqrs', '-S', 'on_standby', '--create-slot'
	],
	'>', \$out, '2>', \$err);
$standby->poll_query_until('postgres',
	"SELECT restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'on_standby'")
  or die 'the slot on the standby never got a restart_lsn';
$primary->safe_psql('postgres', 'SELECT pg_log_standby_snapshot()');
$create->finish;
is($standby->safe_psql('postgres',
		"SELECT plugin FROM pg_replication_slots WHERE slot_name = 'on_standby'"),
	'pg_cqrs', 'a pg_cqrs slot can be created on a standby');

$primary->safe_psql('postgres', q{
	SELECT cqrs.append('order-1', 'OrderPlaced', '{"n": 1}');
	SELECT cqrs.append('order-1', 'OrderPaid', '{"n": 2}');
	BEGIN;
	SELECT cqrs.append('order-2', 'OrderPlaced', '{"n": 3}');
	SELECT cqrs.publish('mail', '{"to": "alice"}');
	COMMIT;
	BEGIN;
	SELECT cqrs.append('order-3', 'OrderPlaced', '{"n": 4}');
	ROLLBACK;
});
$primary->wait_for_replay_catchup($standby);
is(changes($standby, 'on_standby'),
	'order-1/1 order-1/2 order-2/1 mail:{"to":"alice"}',
	'the standby decodes the committed events and messages, in commit order');
is(changes($standby, 'on_standby'), '', 'and, once consumed, nothing again');
is($standby->safe_psql('postgres',
		"SELECT name, lag_events FROM cqrs.outbox_status WHERE name = 'on_standby'"),
	'on_standby|0', 'cqrs.outbox_status works on the standby');
$standby->safe_psql('postgres', "SELECT pg_drop_replication_slot('on_standby')");

# ------------------------------------------------------------- failover
if (!$failover)
{
	$standby->stop;
	$primary->stop;
	done_testing();
	exit;
}

# The consumer of the primary's failover slot gets and confirms the first
# event; the second is appended but not consumed.
$primary->safe_psql('postgres',
	"SELECT cqrs.append('invoice-1', 'InvoiceSent', '{}')");
is(changes($primary, 'outbox'), 'order-1/1 order-1/2 order-2/1 mail:{"to":"alice"} invoice-1/1',
	'the failover slot on the primary decodes');
my $confirmed = $primary->safe_psql('postgres',
	"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'outbox'");
$primary->safe_psql('postgres',
	"SELECT cqrs.append('invoice-2', 'InvoiceSent', '{}')");
$primary->wait_for_replay_catchup($standby);

# The slot sync worker copies the slot and its confirmed position.
$standby->poll_query_until('postgres', qq{
	SELECT synced AND NOT temporary AND confirmed_flush_lsn >= '$confirmed'
	  FROM pg_replication_slots WHERE slot_name = 'outbox'})
  or die 'the failover slot was not synchronised to the standby';
pass('the failover slot is synchronised to the standby');

$primary->stop;
$standby->promote;
$standby->safe_psql('postgres',
	"SELECT cqrs.append('invoice-3', 'InvoiceSent', '{}')");
is(changes($standby, 'outbox'), 'invoice-2/1 invoice-3/1',
	'after promotion the consumer goes on from where it confirmed');

$standby->stop;
done_testing();
