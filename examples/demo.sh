#!/usr/bin/env bash
# examples/demo.sh - a guided tour of pg_cqrs on the orders example ("make demo")
#
# Builds and installs the extension, starts a throwaway cluster (removed on
# exit), loads examples/orders/*.sql into a fresh database and walks through
# the event log: commands, business rules, optimistic concurrency, idempotent
# retries, reading the log as a consumer, bad input, and read models kept by
# a sync and a deferred projection (lag, waiting, a poisoned event).
#
# The SQL runs in psql sessions fed through FIFOs, so that two sessions can
# be interleaved deterministically: the script waits on pg_stat_activity
# (a session blocked on a lock) rather than on sleeps.  Every statement is
# printed before its result; lines from the concurrent sessions are prefixed
# with "A |" and "B |".  Each step checks that exactly the expected SQLSTATEs
# were raised, so the demo stops at the first surprise.

# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)

# shellcheck source=../test/lib/deps.sh
source "$top/test/lib/deps.sh"
cqrs_enter_version examples/demo.sh "$@"
cqrs_install_deps
cqrs_build_install
# shellcheck source=../test/lib/cluster.sh
source "$top/test/lib/cluster.sh"
# shellcheck disable=SC2119 # no extra postgresql.conf lines
cqrs_cluster_start

DB=orders_demo
MARK='@@demo-sync@@'
declare -A S_FD S_PID S_OUT S_SEEN S_SYNCS S_LABEL

demo_cleanup() {
	local name fd
	for name in "${!S_FD[@]}"; do
		fd=${S_FD[$name]}
		exec {fd}>&-
	done
	cqrs_cluster_stop
}
trap demo_cleanup EXIT

die() {
	echo "demo: $*" >&2
	exit 1
}

heading() {
	printf '== %s ==\n\n' "$1"
}

# Explanations, from stdin.
say() {
	cat
	echo
}

# session_open NAME LABEL: a psql session reading from a FIFO.  Statements
# are echoed (-e); errors show their SQLSTATE (VERBOSITY verbose) without
# the C source location (filtered out when shown) or PL/pgSQL context.
session_open() {
	local name=$1 fifo="$CQRS_WORK/$1.in" fd
	S_OUT[$name]="$CQRS_WORK/$name.out"
	S_SEEN[$name]=0
	S_SYNCS[$name]=0
	S_LABEL[$name]=$2
	mkfifo "$fifo"
	: >"${S_OUT[$name]}"
	cqrs_psql -e -P footer=off -v ON_ERROR_STOP=0 -v VERBOSITY=verbose -v SHOW_CONTEXT=never \
		-d "dbname=$DB application_name=$name" <"$fifo" >"${S_OUT[$name]}" 2>&1 &
	S_PID[$name]=$!
	exec {fd}>"$fifo"
	S_FD[$name]=$fd
}

# session_send NAME: send the SQL on stdin to the session, do not wait.
session_send() {
	cat >&"${S_FD[$1]}"
	echo >&"${S_FD[$1]}"
}

# session_show NAME [SQLSTATE...]: print what the session output since the
# last call, and check that the errors in it are exactly the ones listed.
session_show() {
	local name=$1 size chunk got
	shift
	size=$(stat -c %s "${S_OUT[$name]}")
	chunk=$(tail -c +"$((S_SEEN[$name] + 1))" "${S_OUT[$name]}" | head -c "$((size - S_SEEN[$name]))" |
		sed -e "/^$MARK\$/d" -e '/^LOCATION:  /d')
	S_SEEN[$name]=$size
	if [ -n "${NOTE:-}" ]; then
		chunk="$chunk"$'\n'"$NOTE"
	fi
	if [ -n "$chunk" ]; then
		printf '%s\n\n' "$chunk" | sed "1,\$s/^/${S_LABEL[$name]}/;\$s/^.*\$//"
	fi
	got=$(printf '%s\n' "$chunk" | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | tr '\n' ' ')
	if [ "${got% }" != "$*" ]; then
		die "expected errors [$*], got [${got% }] in session $name"
	fi
}

# session_sync NAME: wait until the session has run everything sent so far.
session_sync() {
	local name=$1
	S_SYNCS[$name]=$((S_SYNCS[$name] + 1))
	printf '\\echo %s\n' "$MARK" >&"${S_FD[$name]}"
	for _ in $(seq 600); do
		[ "$(grep -cx -- "$MARK" "${S_OUT[$name]}")" -ge "${S_SYNCS[$name]}" ] && return
		kill -0 "${S_PID[$name]}" 2>/dev/null || break
		sleep 0.05
	done
	cat "${S_OUT[$name]}" >&2
	die "session $name did not finish its statements"
}

# session_run NAME [SQLSTATE...]: send stdin, wait for it, show the result.
session_run() {
	session_send "$1"
	session_sync "$1"
	session_show "$@"
}

# session_wait_lock NAME: wait until the session is blocked on a lock.
session_wait_lock() {
	local n
	for _ in $(seq 600); do
		n=$(cqrs_psql -d "$DB" -Atc "SELECT count(*) FROM pg_stat_activity
			WHERE application_name = '$1' AND wait_event_type = 'Lock'")
		[ "$n" = 1 ] && return
		sleep 0.05
	done
	die "session $1 never waited for a lock"
}

#
# Setup
#
cqrs_psql -c "CREATE DATABASE $DB"
export PGDATABASE=$DB
session_open main ''
session_open clerk_a 'A | '
session_open clerk_b 'B | '

cat <<EOF
pg_cqrs demo: an orders domain written as SQL functions over the event log.
A throwaway PostgreSQL $(cqrs_psql -Atc 'SHOW server_version' | cut -d' ' -f1) cluster is running; it is removed when the demo ends.

EOF
heading "0. Install the extension and the example domain"
session_run main <<'SQL'
CREATE EXTENSION pg_cqrs;
SQL
for f in "$here"/orders/*.sql; do
	cqrs_psql -v ON_ERROR_STOP=1 <"$f" >/dev/null
done
say <<'EOF'
Loaded examples/orders/01_state.sql: orders.order_state, an aggregate that
folds an order's events into a jsonb state, and orders.load_order(id).
Loaded examples/orders/02_commands.sql: the commands register_customer,
place_order, pay_order, ship_order, cancel_order and add_note.  Each reads
its stream's state, checks the business rules, and appends one event with
expected_version = the version it read.
Loaded examples/orders/03_projections.sql: read tables and the handlers of
two projections, put to work in step 7.
EOF

heading "1. Place, pay and ship an order"
say <<'EOF'
Each command returns the version of its stream and the global position of
the event it appended.  Customers and orders are streams too:
customer-alice, order-1001.
EOF
session_run main <<'SQL'
SELECT * FROM orders.register_customer('alice', 'Alice Liddell');
SELECT * FROM orders.place_order('1001', 'alice', '[{"sku": "BOOK-1", "qty": 2, "price": 12.50}]');
SELECT * FROM orders.pay_order('1001', 25.00);
SELECT * FROM orders.ship_order('1001', 'DHL');
\echo 'The stream is the whole history of the order:'
SELECT position, version, type, data FROM cqrs.read_stream('order-1001');
\echo 'Its state is a fold of those events, an ordinary SQL aggregate:'
SELECT orders.order_state(e ORDER BY e.version) AS state FROM cqrs.read_stream('order-1001') AS e;
SQL

heading "2. A business rule says no"
say <<'EOF'
An order that has shipped cannot be cancelled.  The rule lives in the command
function, which raises an ordinary error; nothing is appended.
EOF
session_run main P0001 <<'SQL'
SELECT * FROM orders.cancel_order('1001', 'changed my mind');
SELECT cqrs.stream_version('order-1001');
SQL

heading "3. Two clerks, one order: optimistic concurrency"
say <<'EOF'
Order 1002 is placed (version 1).  Clerk B adds a note in a transaction that
stays open; meanwhile clerk A pays the order.  Both commands read version 1
and append with expected_version => 1.  Appends to one stream take turns, so
A's append waits for B's transaction; when B commits, the stream is at
version 2, not 1: A gets SQLSTATE 40001 and nothing is written for A.
EOF
session_run main <<'SQL'
SELECT * FROM orders.place_order('1002', 'alice', '[{"sku": "BOOK-1", "qty": 2, "price": 12.50}]');
SQL
session_run clerk_b <<'SQL'
BEGIN;
SELECT * FROM orders.add_note('1002', 'gift wrap, please');
SQL
session_send clerk_a <<'SQL'
SELECT * FROM orders.pay_order('1002', 25.00);
SQL
session_wait_lock clerk_a
NOTE="(waiting: B's open transaction has appended to order-1002)" session_show clerk_a
session_run clerk_b <<'SQL'
COMMIT;
SQL
session_sync clerk_a
session_show clerk_a 40001
say <<'EOF'
A decided on stale state.  The cure is to run the command again: it reads the
stream afresh and decides again.  Clients do this in a retry loop on SQLSTATE
40001 (serialization_failure).  Here is one in PL/pgSQL, racing clerk B again:
EOF
session_run clerk_b <<'SQL'
BEGIN;
SELECT * FROM orders.add_note('1002', 'ring twice');
SQL
session_send clerk_a <<'SQL'
\set VERBOSITY default
DO $$
DECLARE
    attempt integer := 1;
BEGIN
    LOOP
        BEGIN
            PERFORM orders.pay_order('1002', 25.00);
            RAISE NOTICE 'attempt %: paid', attempt;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF attempt = 3 THEN RAISE; END IF;
            RAISE NOTICE 'attempt %: %, retrying', attempt, SQLERRM;
            attempt := attempt + 1;
        END;
    END LOOP;
END
$$;
\set VERBOSITY verbose
SQL
session_wait_lock clerk_a
NOTE="(waiting: B's open transaction has appended to order-1002)" session_show clerk_a
session_run clerk_b <<'SQL'
COMMIT;
SQL
session_sync clerk_a
session_show clerk_a
session_run main <<'SQL'
SELECT position, version, type, data FROM cqrs.read_stream('order-1002');
SQL

heading "4. Sending the same command twice: idempotent appends"
say <<'EOF'
A client sends add_note, the connection drops before the answer arrives, and
the client sends it again.  The client chose the event's id (note_id), so the
second append finds that id already in the stream: it returns the same
(version, position) and writes nothing, even though the command now appends
with a newer expected_version.
EOF
session_run main <<'SQL'
SELECT count(*) AS events FROM cqrs.events;
SELECT * FROM orders.add_note('1002', 'leave at the door', note_id => 'a81bc81b-dead-4e5d-abff-90865d1e13b1');
SELECT * FROM orders.add_note('1002', 'leave at the door', note_id => 'a81bc81b-dead-4e5d-abff-90865d1e13b1');
SELECT count(*) AS events FROM cqrs.events;
SQL

heading "5. Reading the whole log, as a consumer does"
say <<'EOF'
cqrs.read_all(after_position, max_count, categories, types) returns events in
position order.  A consumer (a projection, a message relay) remembers the last
position it handled and asks for what comes after it, a page at a time.  A
category is the part of a stream's name before the first '-'.
EOF
session_run main <<'SQL'
SELECT position, stream, version, type FROM cqrs.read_all(0, 5);
SELECT max(position) AS last_seen FROM cqrs.read_all(0, 5) \gset
\echo '-- the consumer remembers last_seen =' :last_seen
SELECT position, stream, version, type FROM cqrs.read_all(:last_seen, 5);
SELECT position, stream, type FROM cqrs.read_all(0, categories => ARRAY['customer']);
SELECT max(position) AS last_seen FROM cqrs.read_all(0) \gset
\echo '-- the consumer remembers last_seen =' :last_seen
SQL
say <<'EOF'
read_all never returns an event while a transaction still in flight could
commit one at a lower position, so a consumer never skips an event.  Clerk B
places order 1003 and keeps the transaction open; meanwhile bob registers
and commits, at a higher position.  cqrs.safe_position() is the position up
to which the log is final; read_all stops there until B is done.
EOF
session_run clerk_b <<'SQL'
BEGIN;
SELECT * FROM orders.place_order('1003', 'alice', '[{"sku": "MUG-7", "qty": 1, "price": 9.00}]');
SQL
session_run main <<'SQL'
SELECT * FROM orders.register_customer('bob', 'Bob Dylan');
SELECT cqrs.safe_position();
\pset footer on
SELECT position, stream, type FROM cqrs.read_all(:last_seen);
\pset footer off
SQL
session_run clerk_b <<'SQL'
COMMIT;
SQL
session_run main <<'SQL'
SELECT cqrs.safe_position();
SELECT position, stream, type FROM cqrs.read_all(:last_seen);
SQL

heading "6. Bad input is refused with a SQLSTATE"
say <<'EOF'
NULL data (22004), metadata that is not a JSON object (22023), a negative
expected_version (22023), an event id already used in another stream (23505),
and the log is append-only (0A000).  None of these writes anything.
EOF
session_run main 22004 22023 22023 23505 0A000 <<'SQL'
SELECT * FROM cqrs.append('order-1004', 'OrderPlaced', NULL);
SELECT * FROM cqrs.append('order-1004', 'OrderPlaced', '{}', metadata => '["not", "an", "object"]');
SELECT * FROM cqrs.append('order-1004', 'OrderPlaced', '{}', expected_version => -1);
SELECT * FROM cqrs.append('order-1004', 'OrderPlaced', '{}', id => 'a81bc81b-dead-4e5d-abff-90865d1e13b1');
DELETE FROM cqrs.events WHERE stream = 'order-1001';
SELECT count(*) AS events FROM cqrs.events;
SQL

heading "7. Read models: a sync and a deferred projection"
say <<'EOF2'
examples/orders/03_projections.sql defines two read tables and their
handlers.  orders.order_summary is a sync projection: a trigger applies each
event in the appending transaction, so it is never behind.  It first catches
up on the history already in the log.  orders.customer_stats is deferred:
pg_cqrs's background worker applies events after they commit, in position
order, in batches that commit together with the projection's checkpoint.
EOF2
session_run main <<'SQL'
SELECT cqrs.create_projection('order_summary', 'orders.apply_order_summary',
                              'sync', tables => '{orders.order_summary}',
                              categories => '{order}');
SELECT * FROM orders.order_summary ORDER BY order_id;
SELECT cqrs.create_projection('customer_stats', 'orders.apply_customer_stats',
                              'deferred', tables => '{orders.customer_stats}',
                              categories => '{order}',
                              types => '{OrderPlaced,OrderPaid}');
SQL
say <<'EOF2'
Read your own writes from a deferred read model: append, take the position
the append returned, wait until the projection has applied it, then read.
EOF2
session_run main <<'SQL'
SELECT position AS placed_at FROM orders.place_order('1004', 'bob', '[{"sku": "PEN-3", "qty": 3, "price": 2.00}]') \gset
SELECT cqrs.wait_for_projection('customer_stats', :placed_at, '5 seconds') AS applied;
SELECT * FROM orders.customer_stats ORDER BY customer;
SELECT name, mode, state, position, lag_events FROM cqrs.projection_status;
SQL
say <<'EOF2'
Lag: pause the deferred projection, append, and its status shows how far
behind it is, in positions and in seconds since the oldest unapplied event.
EOF2
session_run main <<'SQL'
SELECT cqrs.pause_projection('customer_stats');
SELECT * FROM orders.pay_order('1004', 6.00);
SELECT * FROM orders.place_order('1005', 'bob', '[{"sku": "INK-1", "qty": 1, "price": 4.00}]');
SELECT pg_sleep(0.2);
SELECT name, state, position, lag_events, lag_seconds > 0 AS behind FROM cqrs.projection_status;
SELECT cqrs.resume_projection('customer_stats');
SELECT cqrs.wait_for_projection('customer_stats', (SELECT max(position) FROM cqrs.events)) AS applied;
SELECT * FROM orders.customer_stats ORDER BY customer;
SQL
say <<'EOF2'
A poisoned event: an OrderPlaced with a negative total slips past the
commands (appended directly).  The sync projection accepts it; the deferred
handler raises.  customer_stats stops at that event: state 'failed', the
event's position and the error are kept, and its checkpoint sits just before
the event.  Later events wait; other projections go on.
EOF2
session_run main <<'SQL'
SELECT position AS poison FROM cqrs.append('order-1099', 'OrderPlaced', '{"customer": "mallory", "total": -5}') \gset
SELECT * FROM orders.place_order('1006', 'alice', '[{"sku": "MUG-7", "qty": 1, "price": 9.00}]');
SELECT cqrs.wait_for_projection('customer_stats', :poison, '1 second') AS applied;
SELECT name, state, position, error_position, last_error FROM cqrs.projection_status;
SQL
say <<'EOF2'
Recovery: fix the handler and resume_projection() to retry the event, or,
as here, skip_event() to record it in cqrs.skipped_events and move on.
EOF2
session_run main <<'SQL'
SELECT cqrs.skip_event('customer_stats', :poison);
SELECT cqrs.wait_for_projection('customer_stats', (SELECT max(position) FROM cqrs.events)) AS applied;
SELECT projection, position, error FROM cqrs.skipped_events;
SELECT name, state, position, lag_events, error_position FROM cqrs.projection_status;
SELECT * FROM orders.customer_stats ORDER BY customer;
SQL

heading "8. Drift: verify, reconcile, repair, replay"
say <<'EOF2'
Someone edits the read model by hand: a total changed, a row deleted, a row
that no event explains.  verify() notices in one scan, without replaying:
it compares the table with the digest of what the projection itself wrote.
EOF2
session_run main <<'SQL'
SELECT * FROM cqrs.verify('order_summary');
UPDATE orders.order_summary SET total = 0 WHERE order_id = '1001';
DELETE FROM orders.order_summary WHERE order_id = '1002';
INSERT INTO orders.order_summary (order_id, customer, status, total, version) VALUES ('6666', 'eve', 'paid', 1000, 1);
SELECT table_name, rows, expected_rows, drifted_buckets, matches FROM cqrs.verify('order_summary');
SQL
say <<'EOF2'
reconcile() names each drifted row: it replays the log in a subtransaction
it rolls back, compares by primary key, and leaves the table alone.  Only
the rows of the key buckets whose checksums differ are compared row by row.
EOF2
session_run main <<'SQL'
SELECT key, drift, expected->>'total' AS expected_total, actual->>'total' AS actual_total
  FROM cqrs.reconcile('order_summary') ORDER BY key::text;
SQL
say <<'EOF2'
With repair => true it applies exactly those differences (three statements,
not a rebuild); a second call finds nothing.
EOF2
session_run main <<'SQL'
SELECT key, drift FROM cqrs.reconcile('order_summary', repair => true) ORDER BY key::text;
SELECT count(*) AS differences_left FROM cqrs.reconcile('order_summary');
SELECT matches FROM cqrs.verify('order_summary');
SQL
say <<'EOF2'
replay() rebuilds a read model from the whole log in one transaction
(DELETE, never TRUNCATE: readers keep seeing the old rows until it commits)
and returns the number of events it applied.  The skipped poisoned event
stays skipped.
EOF2
session_run main <<'SQL'
SELECT cqrs.replay('customer_stats') AS events_applied;
SELECT * FROM orders.customer_stats ORDER BY customer;
SELECT table_name, rows, matches FROM cqrs.verify('customer_stats');
SQL

heading "9. Change capture: a CRUD table as a source of events"
say <<'EOF2'
examples/orders/05_capture.sql keeps the product catalogue in an ordinary
table, orders.products, edited with plain INSERT, UPDATE and DELETE, and
captures it: cqrs.capture('orders.products', 'product').  Every row change
appends an event in the same transaction -- stream product-<sku>, type
products.inserted / updated / deleted, the row as data -- and a sync
projection keeps each product's price history from those events.  An UPDATE
that changes nothing appends nothing; TRUNCATE is refused.
EOF2
session_run main 0A000 <<'SQL'
SELECT cqrs.create_projection('price_history', 'orders.apply_price_history',
                              'sync', tables => '{orders.price_history}',
                              categories => '{product}');
INSERT INTO orders.products VALUES ('MUG-7', 'Mug', 9.00), ('INK-1', 'Ink', 4.00);
UPDATE orders.products SET price = 9.50 WHERE sku = 'MUG-7';
UPDATE orders.products SET name = 'Blue mug' WHERE sku = 'MUG-7';
UPDATE orders.products SET price = price;
DELETE FROM orders.products WHERE sku = 'INK-1';
SELECT stream, version, type, data, metadata FROM cqrs.read_all(categories => '{product}');
SELECT * FROM orders.price_history ORDER BY sku, version;
TRUNCATE orders.products;
SQL

heading "10. The outbox: streaming the log to other services"
say <<'EOF2'
A logical replication slot with the pg_cqrs output plugin streams every
committed event, in commit order, one JSON object a line, to whoever reads
the slot (pg_recvlogical here; Kafka Connect or any replication client in
production).  examples/orders/06_outbox.sql ships an order and, in the same
transaction, publishes a notification with cqrs.publish: a message that
lives in the WAL only and is streamed only if its transaction commits.  The
transaction that rolls back below leaves no trace in the stream.
EOF2
session_run main <<'SQL'
SELECT 'created' AS slot FROM pg_create_logical_replication_slot('demo_outbox', 'pg_cqrs');
SQL
session_run main <<'SQL'
SELECT * FROM orders.place_order('2001', 'alice', '[{"sku": "LAMP-2", "qty": 1, "price": 30.00}]');
SELECT * FROM orders.pay_order('2001', 30.00);
SELECT * FROM orders.ship_order_and_notify('2001', 'UPS');
UPDATE orders.products SET price = 8.50 WHERE sku = 'MUG-7';
BEGIN;
SELECT * FROM orders.place_order('2002', 'alice', '[{"sku": "LAMP-2", "qty": 9, "price": 30.00}]');
SELECT cqrs.publish('notifications', '{"never": "sent"}');
ROLLBACK;
SELECT name, active, lag_bytes > 0 AS behind, lag_events, wal_status FROM cqrs.outbox_status;
SQL
end_lsn=$(cqrs_psql -d "$DB" -Atc 'SELECT pg_current_wal_lsn()')
echo "\$ pg_recvlogical -d $DB --slot demo_outbox --start --endpos $end_lsn -f - -o categories=order,product"
cqrs_as_owner "$CQRS_BINDIR/pg_recvlogical" -d "$DB" --slot demo_outbox --start \
	--endpos "$end_lsn" --no-loop -f - -o categories=order,product ||
	die "pg_recvlogical failed"
echo
say <<'EOF2'
The consumer confirmed what it received: the slot no longer lags.  A
consumer deduplicates by "id" (delivery is at least once: after a crash the
unconfirmed transactions come again).  A slot nobody reads keeps WAL
forever, so drop it when done (and set max_slot_wal_keep_size).
EOF2
session_run main <<'SQL'
SELECT name, active, lag_events, wal_status FROM cqrs.outbox_status;
SELECT pg_drop_replication_slot('demo_outbox');
SQL

echo "Done: the demo's cluster is stopped and removed.  The domain is in examples/orders/."
