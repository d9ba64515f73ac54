/* http.c — the HTTP/1.1 responder in C (the same behaviour as
 * guests/http.wat): answers every request head with a fixed 200, keeps the
 * connection alive, handles pipelined and split requests. One instance
 * serves many connections (queue mode, where the host runs the loop since
 * there is no `run` export) or one (direct mode).
 *
 * Per-connection parse state lives in a hash table keyed by the connection
 * id, laid out as http.wat's (see there): 16,384 slots of {conn, matched}
 * (conn 0: empty), open addressing from the slot conn & 16383
 * with linear probing, deletion by backward shift. Capacity: 12,288
 * connections per instance; on_open refuses one more (returns -1: the host
 * closes it), so an accepted connection's state is never dropped. An env
 * that sees a callback of a connection it never opened is shared between
 * connections (direct mode, --policy message) and keeps entries of
 * connections closed elsewhere: when full it drops entries instead of
 * refusing. */
#include "wamr_coro.h"

#define SLOT_BITS 14
#define SLOTS (1u << SLOT_BITS)
#define CAPACITY (SLOTS / 4 * 3)

static struct entry { int32_t conn; int32_t matched; } table[SLOTS];
static uint32_t used;     /* entries in the table */
static int shared;        /* a callback came for a connection never opened here */
static uint8_t rx[WCORO_DEFAULT_CHUNK_SIZE];
static const char response[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
    "Hello from wamr-coro\n";

WCORO_EXPORT("alloc") int32_t guest_alloc(int32_t size) {
    return size <= (int32_t)sizeof rx ? (int32_t)(uintptr_t)rx : 0;
}

static uint32_t home(int32_t conn) {
    return (uint32_t)conn & (SLOTS - 1);
}

/* The slot holding conn's entry, or else the empty slot that ends its probe
 * (where it would go). Ends: used <= CAPACITY leaves a slot empty. */
static uint32_t probe(int32_t conn) {
    uint32_t i = home(conn);
    while (table[i].conn != conn && table[i].conn != 0) i = (i + 1) & (SLOTS - 1);
    return i;
}

/* Empties slot `hole`, moving back each entry behind it that may fill the
 * hole (its home is not between the hole and it), up to an empty slot. */
static void delete_at(uint32_t hole) {
    for (uint32_t i = (hole + 1) & (SLOTS - 1); table[i].conn != 0; i = (i + 1) & (SLOTS - 1)) {
        if (((i - home(table[i].conn)) & (SLOTS - 1)) >= ((i - hole) & (SLOTS - 1))) {
            table[hole] = table[i];
            hole = i;
        }
    }
    table[hole].conn = 0;
    used--;
}

/* Enters conn, which has no entry and whose probe ends at the empty slot i,
 * with matched 0: the entry, or 0 if the table is full and not shared. */
static struct entry *enter(int32_t conn, uint32_t i) {
    if (used >= CAPACITY) {
        if (!shared) return 0;
        /* The first entry from conn's home slot on: anywhere in the table
         * alike, so the load stays even and probes short. */
        uint32_t j = home(conn);
        while (table[j].conn == 0) j = (j + 1) & (SLOTS - 1);
        delete_at(j);
        i = probe(conn);
    }
    used++;
    table[i].conn = conn;
    table[i].matched = 0;
    return &table[i];
}

WCORO_EXPORT("on_open") int32_t on_open(int32_t conn) {
    struct entry *e = &table[probe(conn)];
    if (e->conn == conn) {
        e->matched = 0;
        return 0;
    }
    return enter(conn, (uint32_t)(e - table)) ? 0 : -1;
}

WCORO_EXPORT("on_close") void on_close(int32_t conn) {
    uint32_t i = probe(conn);
    if (table[i].conn == conn) delete_at(i);
    else shared = 1;
}

WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    struct entry *e = &table[probe(conn)];
    int32_t m = 0;
    if (e->conn == conn) m = e->matched;
    else shared = 1;
    for (int32_t i = 0; i < n; i++) {
        uint8_t want = (m & 1) ? '\n' : '\r';
        if (p[i] == want) m++;
        else m = p[i] == '\r';
        if (m == 4) {
            if (wcoro_send(conn, response, (int32_t)sizeof response - 1) < 0) return -1;
            m = 0;
        }
    }
    if (e->conn != conn) {
        /* No entry (a shared env): one only for a request in progress. */
        if (m == 0) return 0;
        e = enter(conn, (uint32_t)(e - table));
    }
    e->matched = m;
    return 0;
}
