/*
 * kv.h - what Keel reads back from etcd: keys with their values and
 * revisions, and members' registrations.  The cluster view (keel/cstate.h)
 * hands these out; the etcd client that fills them is internal.
 */
#ifndef KEEL_KV_H
#define KEEL_KV_H

#include <stddef.h>
#include <stdint.h>

/* A connection to etcd (opaque). */
typedef struct keel_etcd keel_etcd;

struct keel_etcd_kv {
    char *key; /* NUL-terminated; never NULL in a returned kv */
    size_t key_len;
    unsigned char *value; /* NUL-terminated; never NULL in a returned kv */
    size_t value_len;
    int64_t create_revision; /* revision that created the key (0 when absent) */
    int64_t mod_revision;    /* revision of the last change */
    int64_t version;         /* changes since creation, 1 after a create */
    int64_t lease;           /* lease the key is attached to, 0 for none */
};

/* Free what `kv` owns and zero it; a zeroed kv may be released again. */
void keel_etcd_kv_release(struct keel_etcd_kv *kv);

/* A list of key/values, as returned by a range. */
struct keel_etcd_kvs {
    int64_t revision; /* the store revision the result was read at */
    int64_t count;    /* keys in the range (more than n when limited) */
    int more;         /* 1 when a limit cut the result */
    size_t n;
    struct keel_etcd_kv *kvs;
};

void keel_etcd_kvs_release(struct keel_etcd_kvs *r);

/* A registration as read back from etcd. */
struct keel_member_info {
    char *role;
    char *id;
    char *address;
    uint64_t incarnation;
    int64_t start_time_ms; /* Unix time in ms the process started */
    int64_t pid;
    int64_t lease;           /* from the key */
    int64_t create_revision; /* from the key */
};

void keel_member_info_release(struct keel_member_info *m);

#endif
