/* The DPDK headers nemflow binds. rte_config.h comes first through pkg-config's -include. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_ring_elem.h>
#include <rte_sched.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_bus_vdev.h>
#include <rte_dev.h>
#include <rte_telemetry.h>
#include <rte_malloc.h>
#include <rte_memory.h>

/* rte_errno is a per-lcore thread-local variable, which bindgen cannot bind; this accessor
 * is wrapped like DPDK's own static inline functions. */
static inline int nemflow_rte_errno(void) { return rte_errno; }
