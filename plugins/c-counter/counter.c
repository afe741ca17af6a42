/*
 * c-counter: an Outpost plugin written in C against sdk/ABI.md alone, to show the ABI is
 * language-neutral. For every input record it counts the records seen with the same key
 * (state key "k/<key>", or "n" for records without a key; value: u64 little-endian), and
 * emits {"key": <key or null>, "count": N} to "counter.counts" with the record's key.
 *
 * Build (a WASI reactor: the host calls _initialize once, then the outpost_* exports):
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor \
 *         -Wl,--strip-all -o plugin.wasm counter.c
 *
 * It has no outpost_init export (init is optional in the ABI) and uses malloc/free for the
 * buffers the host asks for with outpost_alloc.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("outpost"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("emit")
int32_t outpost_emit(const uint8_t *topic, int32_t topic_len, const uint8_t *key, int32_t key_len,
                     const uint8_t *value, int32_t value_len, const uint8_t *headers,
                     int32_t headers_len);
IMPORT("state_get")
int32_t outpost_state_get(const uint8_t *key, int32_t key_len, uint8_t *out, int32_t out_cap);
IMPORT("state_put")
int32_t outpost_state_put(const uint8_t *key, int32_t key_len, const uint8_t *value,
                          int32_t value_len);
IMPORT("set_error")
void outpost_set_error(const uint8_t *msg, int32_t msg_len);

#define STATUS_NOT_FOUND (-1)
#define NO_KEY 0xFFFFFFFFu
#define MAX_STATE_KEY 1024u

static const char OUTPUT_TOPIC[] = "counter.counts";

EXPORT("outpost_abi_version")
int32_t abi_version(void) { return 1; }

EXPORT("outpost_alloc")
int32_t alloc(int32_t size) {
    /* malloc(0) may return NULL, which would read as failure. */
    void *p = malloc(size > 0 ? (size_t)size : 1);
    return (int32_t)(uintptr_t)p;
}

static int32_t fail(const char *msg) {
    outpost_set_error((const uint8_t *)msg, (int32_t)strlen(msg));
    return 1;
}

static uint32_t read_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Appends the decimal digits of v to out; returns the new end. */
static char *put_u64(char *out, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) *out++ = digits[--n];
    return out;
}

/* Appends key as a JSON string (quotes included); returns the new end. */
static char *put_json_string(char *out, const uint8_t *s, uint32_t len) {
    static const char hex[] = "0123456789abcdef";
    *out++ = '"';
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c < 0x20) {
            memcpy(out, "\\u00", 4);
            out += 4;
            *out++ = hex[c >> 4];
            *out++ = hex[c & 15];
        } else {
            *out++ = (char)c;
        }
    }
    *out++ = '"';
    return out;
}

static int32_t handle(const uint8_t *rec, uint32_t len) {
    /* Record encoding (ABI.md): u32 topic_len, topic, u64 offset, u64 timestamp_ms,
     * u32 key_len (0xFFFFFFFF = no key), key, u32 value_len, value, headers. Only the key is
     * needed; every length is checked against what is left. */
    uint32_t pos = 0;
    if (len - pos < 4) return fail("record truncated before the topic length");
    uint32_t topic_len = read_u32(rec + pos);
    pos += 4;
    if (len - pos < topic_len) return fail("record truncated in the topic");
    pos += topic_len;
    if (len - pos < 16 + 4) return fail("record truncated before the key");
    pos += 16; /* offset and timestamp */
    uint32_t key_len = read_u32(rec + pos);
    pos += 4;
    const uint8_t *key = NULL;
    if (key_len != NO_KEY) {
        if (len - pos < key_len) return fail("record truncated in the key");
        key = rec + pos;
    }

    /* State key: "k/<key>" or "n". */
    uint8_t state_key[MAX_STATE_KEY];
    uint32_t state_key_len;
    if (key) {
        if (key_len > MAX_STATE_KEY - 2) return fail("record key too long to count (over 1022 bytes)");
        state_key[0] = 'k';
        state_key[1] = '/';
        memcpy(state_key + 2, key, key_len);
        state_key_len = key_len + 2;
    } else {
        state_key[0] = 'n';
        state_key_len = 1;
    }

    uint8_t stored[8];
    uint64_t count = 0;
    int32_t rc = outpost_state_get(state_key, (int32_t)state_key_len, stored, sizeof stored);
    if (rc == 8) {
        for (int i = 7; i >= 0; i--) count = count << 8 | stored[i];
    } else if (rc != STATUS_NOT_FOUND) {
        return fail(rc < 0 ? "state_get failed" : "stored count is not 8 bytes");
    }
    count += 1;
    for (int i = 0; i < 8; i++) stored[i] = (uint8_t)(count >> (8 * i));
    if (outpost_state_put(state_key, (int32_t)state_key_len, stored, sizeof stored) < 0)
        return fail("state_put failed");

    /* {"key":<json string or null>,"count":N}: at most 6 bytes per key byte + 48. */
    char *json = malloc((size_t)(key ? key_len : 0) * 6 + 48);
    if (!json) return fail("out of memory");
    char *end = json;
    memcpy(end, "{\"key\":", 7);
    end += 7;
    if (key) {
        end = put_json_string(end, key, key_len);
    } else {
        memcpy(end, "null", 4);
        end += 4;
    }
    memcpy(end, ",\"count\":", 9);
    end += 9;
    end = put_u64(end, count);
    *end++ = '}';

    rc = outpost_emit((const uint8_t *)OUTPUT_TOPIC, (int32_t)(sizeof OUTPUT_TOPIC - 1), key,
                      key ? (int32_t)key_len : -1, (const uint8_t *)json, (int32_t)(end - json),
                      NULL, 0);
    free(json);
    if (rc < 0) return fail("emit to counter.counts failed");
    return 0;
}

EXPORT("outpost_on_record")
int32_t on_record(uint8_t *ptr, int32_t len) {
    int32_t rc = handle(ptr, (uint32_t)len);
    free(ptr); /* the buffer came from outpost_alloc and is ours again */
    return rc;
}
