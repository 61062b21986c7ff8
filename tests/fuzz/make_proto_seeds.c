/*
 * make_proto_seeds.c - write one valid frame of each message type into a
 * directory, and the frames with rows again with 16-bit rows (bf16 and
 * fp16): the seed corpus of fuzz_proto (tests/fixtures/proto-corpus/).
 *
 *   keel-make-proto-seeds DIR
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "keel/proto.h"

/* DIR/TYPE.bin, or DIR/TYPE_SUFFIX.bin. */
static int write_seed(const char *dir, const struct keel_msg *m, const char *suffix)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    char path[4096];
    FILE *f;
    int rc = 0;

    if (keel_proto_encode(&b, m, &err) != 0) {
        fprintf(stderr, "cannot encode %s: %s\n", keel_msg_type_name(m->hdr.type), err.msg);
        keel_buf_release(&b);
        return 1;
    }
    snprintf(path, sizeof(path), "%s/%s%s%s.bin", dir, keel_msg_type_name(m->hdr.type),
             suffix ? "_" : "", suffix ? suffix : "");
    f = fopen(path, "wb");
    if (f == NULL || fwrite(b.buf, 1, b.len, f) != b.len) {
        fprintf(stderr, "cannot write '%s': %s\n", path, strerror(errno));
        rc = 1;
    }
    if (f != NULL && fclose(f) != 0)
        rc = 1;
    keel_buf_release(&b);
    return rc;
}

int main(int argc, char **argv)
{
    static const uint64_t keys[] = {1, 2, (UINT64_C(3) << 48) | 9};
    static const float rows[] = {0.5f, -1.0f, 2.0f, 4.0f, 8.0f, -16.0f};
    static const uint32_t offsets[] = {0, 5, 9};
    struct keel_msg m;
    int rc = 0;

    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: %s DIR\nwrite one valid frame per message type into DIR\n",
                argv[0]);
        return argc == 2 ? 0 : 64;
    }
    for (unsigned type = 1; type <= KEEL_MSG_TYPE_MAX; type++) {
        memset(&m, 0, sizeof(m));
        m.hdr.type = (uint8_t)type;
        m.hdr.request_id = type;
        m.hdr.epoch = 7;
        switch (type) {
        case KEEL_MSG_HELLO:
            m.u.hello.role = KEEL_ROLE_WORKER;
            m.u.hello.incarnation = 2;
            m.u.hello.node_id = keel_str_of("w1");
            break;
        case KEEL_MSG_PUSH:
        case KEEL_MSG_REPLICATE: {
            struct keel_msg_push *p = type == KEEL_MSG_PUSH ? &m.u.push : &m.u.replicate.push;
            m.u.replicate.range = 17;
            m.u.replicate.lsn = 99;
            p->worker_id = keel_str_of("worker-1");
            p->shard = 3;
            p->incarnation = 1;
            p->seq = 12;
            p->clock = 4;
            p->assignment_version = 6;
            p->data = (struct keel_rows){1, 2, 3, keys, rows, 0, NULL};
            break;
        }
        case KEEL_MSG_PULL:
            m.u.pull.worker_id = keel_str_of("w2");
            m.u.pull.clock = 5;
            m.u.pull.assignment_version = 6;
            m.u.pull.data = (struct keel_rows){1, 2, 3, keys, NULL, 0, NULL};
            break;
        case KEEL_MSG_PULL_REPLY:
            m.hdr.flags = KEEL_FLAG_REPLY;
            m.u.pull_reply.clock = 5;
            m.u.pull_reply.data = (struct keel_rows){1, 2, 3, keys, rows, 0, NULL};
            break;
        case KEEL_MSG_ACK:
            m.hdr.flags = KEEL_FLAG_REPLY;
            m.u.ack = (struct keel_msg_ack){100, 12, 3, KEEL_ACK_APPLIED};
            break;
        case KEEL_MSG_ERROR:
            m.hdr.flags = KEEL_FLAG_REPLY;
            m.u.error.code = KEEL_EREDIRECT;
            m.u.error.assignment_version = 8;
            m.u.error.message = keel_str_of("not the primary");
            break;
        case KEEL_MSG_SHARD_READ:
            m.u.shard_read.dataset = keel_str_of("fashion-mnist");
            m.u.shard_read.shard = 1;
            m.u.shard_read.max_records = 64;
            break;
        case KEEL_MSG_SHARD_DATA:
            m.hdr.flags = KEEL_FLAG_REPLY | KEEL_FLAG_LAST;
            m.u.shard_data.nrecords = 2;
            m.u.shard_data.total = 2;
            m.u.shard_data.offsets = offsets;
            m.u.shard_data.data = (const unsigned char *)"helloabcd";
            break;
        case KEEL_MSG_RANGE_COPY:
            m.u.range_copy.range = 7;
            m.u.range_copy.term = 3;
            m.u.range_copy.payload = keel_view_make("packed range", 12);
            break;
        case KEEL_MSG_ADMIN:
            m.u.admin.op = 1;
            m.u.admin.payload = keel_view_make("{\"op\":\"status\"}", 15);
            break;
        }
        rc |= write_seed(argv[1], &m, NULL);
        /* The rows again as 16-bit floats: PUSH and PULL_REPLY carry them, PULL asks for them. */
        if (type == KEEL_MSG_PUSH || type == KEEL_MSG_PULL || type == KEEL_MSG_PULL_REPLY) {
            struct keel_rows *d = type == KEEL_MSG_PUSH   ? &m.u.push.data
                                  : type == KEEL_MSG_PULL ? &m.u.pull.data
                                                          : &m.u.pull_reply.data;
            uint16_t half[6];

            for (unsigned enc = KEEL_ROWS_BF16; enc <= KEEL_ROWS_FP16; enc++) {
                keel_half_narrow((enum keel_rows_enc)enc, rows, half, 6);
                d->enc = enc;
                if (type != KEEL_MSG_PULL) {
                    d->rows = NULL;
                    d->half = half;
                }
                rc |= write_seed(argv[1], &m, keel_rows_enc_name(enc));
            }
        }
    }
    return rc;
}
