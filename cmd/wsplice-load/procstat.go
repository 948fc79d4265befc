package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc/stat; 100 on every Linux architecture Go
// supports for this tool (sysconf(_SC_CLK_TCK)).
const userHZ = 100

// cpuTimes is the system-wide "cpu" line of /proc/stat, in ticks, with
// the number of CPUs it sums (its "cpuN" lines) and when it was read.
type cpuTimes struct {
	user, nice, system, idle, iowait, irq, softirq, steal uint64
	cpus                                                  int
	at                                                    time.Time
}

func readCPU() (cpuTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	defer f.Close()
	var t cpuTimes
	found := false
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		switch {
		case len(fs) >= 9 && fs[0] == "cpu":
			v := make([]uint64, 8)
			for i := range v {
				v[i], _ = strconv.ParseUint(fs[i+1], 10, 64)
			}
			t.user, t.nice, t.system, t.idle, t.iowait, t.irq, t.softirq, t.steal = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
			found = true
		case len(fs) > 0 && strings.HasPrefix(fs[0], "cpu"):
			t.cpus++
		}
	}
	if err := s.Err(); err != nil {
		return cpuTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	if !found || t.cpus == 0 {
		return cpuTimes{}, fmt.Errorf("/proc/stat: no cpu lines")
	}
	t.at = time.Now()
	return t, nil
}

// cpuUsage is the CPU time spent system-wide between two samples, seconds.
type cpuUsage struct {
	User    float64 `json:"user_s"`
	Nice    float64 `json:"nice_s"`
	System  float64 `json:"system_s"`
	Irq     float64 `json:"irq_s"`
	Softirq float64 `json:"softirq_s"`
	Idle    float64 `json:"idle_s"`
	Steal   float64 `json:"steal_s"`
	// Busy is user+nice+system+irq+softirq. These fields are sampled at
	// the timer tick, and a CPU that goes idle between ticks (NO_HZ) is
	// not sampled while briefly busy: on the 2-vCPU VMs this project is
	// measured on they missed up to 40% of the time at a partial load.
	// Busy serves only for shares (softirq of busy); NonIdle is the
	// system-wide CPU time.
	Busy float64 `json:"busy_s"`
	// NonIdle is CPUs x wall time - idle - iowait - steal: every CPU
	// second the machine spent on anything (processes, kworkers, softirq
	// wherever it ran). Idle time is clocked exactly at idle entry and
	// exit (NO_HZ), not sampled, so this is exact where Busy is not.
	NonIdle float64 `json:"nonidle_s"`
	// Capacity is CPUs x wall time, the seconds the others divide.
	Capacity float64 `json:"capacity_s"`
	// Attributed is the CPU of the processes under test and of kernel
	// threads (see attributedTicks).
	Attributed float64 `json:"attributed_s"`
}

func cpuDelta(a, b cpuTimes) cpuUsage {
	s := func(x, y uint64) float64 { return float64(y-x) / userHZ }
	u := cpuUsage{
		User: s(a.user, b.user), Nice: s(a.nice, b.nice), System: s(a.system, b.system),
		Irq: s(a.irq, b.irq), Softirq: s(a.softirq, b.softirq),
		Idle: s(a.idle, b.idle) + s(a.iowait, b.iowait), Steal: s(a.steal, b.steal),
	}
	u.Busy = u.User + u.Nice + u.System + u.Irq + u.Softirq
	u.Capacity = float64(b.cpus) * b.at.Sub(a.at).Seconds()
	u.NonIdle = max(0, u.Capacity-u.Idle-u.Steal)
	return u
}

// rssBytes sums VmRSS of the given processes.
func rssBytes(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		v, err := statusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// statusField reads a "Name:   123 kB" line and returns bytes.
func statusField(path, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		fs := strings.Fields(line[len(name):])
		if len(fs) == 0 {
			break
		}
		v, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", path, name, err)
		}
		if len(fs) > 1 && fs[1] == "kB" {
			v *= 1024
		}
		return v, nil
	}
	return 0, fmt.Errorf("%s: no %s line", path, name)
}

// kernelMem is the kernel memory that grows with connections: slab (socket
// structs, dentries, epoll items...) and TCP socket buffers.
type kernelMem struct {
	SlabBytes     int64 `json:"slab_bytes"`
	TCPMemBytes   int64 `json:"tcp_mem_bytes"`
	TCPInUse      int64 `json:"tcp_inuse"`
	SockstatPages int64 `json:"-"`
}

func readKernelMem() (kernelMem, error) {
	var k kernelMem
	var err error
	if k.SlabBytes, err = statusField("/proc/meminfo", "Slab:"); err != nil {
		return k, err
	}
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return k, fmt.Errorf("read sockstat: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) == 0 || fs[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(fs); i += 2 {
			v, _ := strconv.ParseInt(fs[i+1], 10, 64)
			switch fs[i] {
			case "inuse":
				k.TCPInUse = v
			case "mem":
				k.TCPMemBytes = v * int64(os.Getpagesize())
			}
		}
	}
	return k, nil
}

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags field.
const pfKthread = 0x00200000

// taskCPU returns utime+stime ticks of pid (all its threads) and whether it
// is a kernel thread.
func taskCPU(pid int) (uint64, bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, false, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	flags, _ := strconv.ParseUint(f[6], 10, 64)
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return ut + st, flags&pfKthread != 0, nil
}

// attributedTicks is a snapshot of the CPU of the processes under test
// (the given PIDs and this generator) and of every kernel thread
// (kworkers, ksoftirqd: where the sockmap redirect runs), by task. This
// kernel charges softirq time to whichever task a tick interrupts (no
// CONFIG_IRQ_TIME_ACCOUNTING), mostly ours on loopback. Unlike /proc/stat,
// it leaves out other tenants of a shared machine. Compare two snapshots
// with ticksSince: kworkers come and go during a run, so a plain sum can
// shrink.
func attributedTicks(pids []int) map[int]uint64 {
	ticks := map[int]uint64{}
	for _, p := range append([]int{os.Getpid()}, pids...) {
		if _, ok := ticks[p]; ok {
			continue
		}
		if t, _, err := taskCPU(p); err == nil {
			ticks[p] = t
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ok := ticks[p]; ok {
			continue
		}
		if t, k, err := taskCPU(p); err == nil && k {
			ticks[p] = t
		}
	}
	return ticks
}

// ticksSince is the CPU the tasks of snapshot b used since snapshot a: a
// task that started in between counts whole; one that ended in between is
// lost (its ticks cannot be read any more); a PID reused by a new task
// counts the new task's ticks if they are below the old one's.
func ticksSince(a, b map[int]uint64) uint64 {
	var total uint64
	for p, tb := range b {
		ta, ok := a[p]
		switch {
		case !ok:
			total += tb
		case tb >= ta:
			total += tb - ta
		default:
			total += tb
		}
	}
	return total
}
