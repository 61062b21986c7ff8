/*
 * cview.h - a cluster's keys in etcd, kept up to date by a watch.
 *
 * A view watches every key under /keel/<cluster>/ (etcd_stream.c's watch:
 * a listing first, then the changes in order; after a disconnect it resumes
 * from the last revision delivered, and when that history was compacted it
 * lists the keys again and the view starts over from that listing).  It
 * holds a copy of every key, sorted, as of the last batch applied.
 *
 * Readers take what they need under the view's lock: one key
 * (keel_cview_get()), the keys under a prefix (keel_cview_each()), or all of
 * them sorted out as a struct keel_cstate (keel_cview_snapshot(), the same
 * sorting keel_cstate_read() does after a range read).  keys.h builds the
 * keys to ask for and parses what comes back.
 *
 * Thread-safe: the watch thread applies batches while any thread reads.
 */
#ifndef KEEL_CVIEW_H
#define KEEL_CVIEW_H

#include <stdint.h>

#include "etcd.h"
#include "keel/buf.h"
#include "keel/cstate.h"

typedef struct keel_cview keel_cview;

/*
 * Called on the watch thread after batch `b` has been applied to the view
 * (the view's lock is not held: the callback may read the view).  One call
 * at a time.
 */
typedef void keel_cview_fn(void *user, keel_cview *v, const struct keel_etcd_watch_batch *b);

/*
 * Start watching /keel/<cluster>/ from a listing of its keys.  `fn` (may be
 * NULL) is told about every batch; *out is set before its first call.
 * Errors: those of keel_etcd_watch_start() (*out is then NULL).
 */
int keel_cview_start(keel_etcd *c, const char *cluster, keel_cview_fn *fn, void *user,
                     keel_cview **out, struct keel_error *err);

/* Stop the watch (a callback in progress finishes) and free the view. */
void keel_cview_stop(keel_cview *v);

const char *keel_cview_cluster(const keel_cview *v);

/* The revision of the last batch applied; 0 before the first. */
int64_t keel_cview_revision(keel_cview *v);

/*
 * Copy the value of `key` (a whole key, as keys.h builds it) into `value`
 * (reset first); `mod_revision` (may be NULL) receives its mod revision.
 * 0, or KEEL_ENOTFOUND when the view does not have it.
 */
int keel_cview_get(keel_cview *v, const char *key, struct keel_buf *value, int64_t *mod_revision);

/*
 * Call `fn` with each key starting with `prefix`, in key order, under the
 * view's lock (`fn` must not call the view; the kv is valid during the call
 * only).  `fn` returning non-zero stops the walk with that value.
 */
int keel_cview_each(keel_cview *v, const char *prefix,
                    int (*fn)(void *user, const struct keel_etcd_kv *kv), void *user);

/*
 * Every key of the view, sorted out into `out` (released by the caller with
 * keel_cstate_release()); out->revision is the view's revision.
 */
void keel_cview_snapshot(keel_cview *v, struct keel_cstate *out);

#endif
