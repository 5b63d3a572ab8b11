/*
 * A QEMU TCG plugin that counts the guest instructions a program executes, and among them the integer
 * dot-product instructions (SDOT/UDOT, vector and by element: the Cortex-A76's int8 path).
 *
 * The guest asks for a reading by writing a line that starts with "PERCH-COUNT:" to any file descriptor
 * (the bench writes it to /dev/null): the plugin sees the write system call, and appends
 *   <label> <instructions> <dot-product instructions>
 * to the file named by its `out=` argument, the counts summed over every guest thread so far. A last line
 * labelled `exit` is written when the program ends. Differences between two readings give the work between
 * them, e.g. per decoded token, on the guest's instruction set whatever the host.
 *
 * Built by test/arm/setup.sh --counting against QEMU's qemu-plugin.h; loaded by test/arm/run.sh when
 * PERCH_ARM_COUNT names the output file.
 */
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { AARCH64_SYS_WRITE = 64, MAX_MARK = 200 };
static const char MARK[] = "PERCH-COUNT:";

typedef struct {
  uint64_t instructions;
  uint64_t dot_products;
} Counts;

static struct qemu_plugin_scoreboard *counts;
static qemu_plugin_u64 instructions, dot_products;
static FILE *out;
static GMutex out_lock;

/* SDOT/UDOT (vector): 0 Q U 01110 10 0 Rm 100101 Rn Rd; (by element): 0 Q U 01111 10 L M Rm 1110 H 0 Rn Rd. */
static bool is_dot_product(uint32_t word) {
  return (word & 0x9FE0FC00u) == 0x0E809400u || (word & 0x9FC0F400u) == 0x0F80E000u;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  size_t n = qemu_plugin_tb_n_insns(tb);
  /* One add per executed block, not per instruction: counting stays cheap. */
  qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, instructions, n);
  for (size_t i = 0; i < n; i++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    uint32_t word = 0;
    if (qemu_plugin_insn_data(insn, &word, sizeof word) == sizeof word && is_dot_product(word)) {
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64, dot_products, 1);
    }
  }
}

static void write_reading(const char *label, size_t label_len) {
  g_mutex_lock(&out_lock);
  fprintf(out, "%.*s %" PRIu64 " %" PRIu64 "\n", (int)label_len, label, qemu_plugin_u64_sum(instructions),
          qemu_plugin_u64_sum(dot_products));
  fflush(out);
  g_mutex_unlock(&out_lock);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t fd, uint64_t buf, uint64_t len,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  if (num != AARCH64_SYS_WRITE || len <= sizeof MARK - 1 || len > MAX_MARK) return;
  g_autoptr(GByteArray) data = g_byte_array_new();
  if (!qemu_plugin_read_memory_vaddr(buf, data, len)) return;
  if (memcmp(data->data, MARK, sizeof MARK - 1) != 0) return;
  const char *label = (const char *)data->data + sizeof MARK - 1;
  size_t label_len = len - (sizeof MARK - 1);
  while (label_len > 0 && (label[label_len - 1] == '\n' || label[label_len - 1] == ' ')) label_len--;
  for (size_t i = 0; i < label_len; i++) {
    if (label[i] == ' ' || label[i] == '\n' || (unsigned char)label[i] < 0x20) return; /* one word labels only */
  }
  write_reading(label, label_len);
}

static void on_program_exit(qemu_plugin_id_t id, void *p) {
  write_reading("exit", 4);
  fclose(out);
  qemu_plugin_scoreboard_free(counts);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  const char *path = NULL;
  for (int i = 0; i < argc; i++) {
    if (g_str_has_prefix(argv[i], "out=")) path = argv[i] + 4;
    else {
      fprintf(stderr, "insn-count: unknown argument %s (only out=FILE)\n", argv[i]);
      return -1;
    }
  }
  if (!path) {
    fprintf(stderr, "insn-count: out=FILE is required\n");
    return -1;
  }
  out = fopen(path, "w");
  if (!out) {
    fprintf(stderr, "insn-count: cannot write %s\n", path);
    return -1;
  }
  counts = qemu_plugin_scoreboard_new(sizeof(Counts));
  instructions = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, instructions);
  dot_products = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, dot_products);
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, on_program_exit, NULL);
  return 0;
}
