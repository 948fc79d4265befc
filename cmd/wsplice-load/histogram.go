package main

import (
	"math"
	"math/bits"
	"time"
)

// histogram is a log-linear latency histogram in the manner of HDR
// Histogram: values below 2^subBits are exact; above, each power of two is
// split into 2^(subBits-1) linear buckets, so a recorded value is off by less
// than 1/128 (0.8%) of itself. Fixed size, no allocation when recording,
// mergeable: one per goroutine, merged at the end.
const (
	subBits    = 8
	subCount   = 1 << subBits // 256
	halfCount  = subCount / 2
	maxExp     = 64 - subBits
	histBucket = subCount + maxExp*halfCount
)

type histogram struct {
	counts [histBucket]uint64
	n      uint64
	max    int64
}

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(v) - subBits // >= 1
	return subCount + (e-1)*halfCount + int(v>>e) - halfCount
}

// bucketMid is the middle of bucket i's range, the value reported for it.
func bucketMid(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	e := (i-subCount)/halfCount + 1
	m := uint64((i-subCount)%halfCount + halfCount)
	lo := m << e
	return int64(lo + (uint64(1)<<e)/2)
}

func (h *histogram) record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(uint64(v))]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the value at quantile q (0..1): the smallest recorded
// value with at least q of the samples at or below it, the ceil(q*n)-th
// (at least the first). Rounding q*n to the nearest instead would take
// the 5th of 10 samples for q=0.54, with only 50% at or below it.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	// q*n in floating point can land just above a whole number
	// (0.54*450 = 243.00000000000003), which ceil would take one rank
	// too far: shave a relative 1e-12 off first.
	rank := uint64(math.Ceil(q * float64(h.n) * (1 - 1e-12)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := bucketMid(i)
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}

// latencySummary is a histogram's percentiles in microseconds.
type latencySummary struct {
	Count  uint64  `json:"count"`
	P50us  float64 `json:"p50_us"`
	P90us  float64 `json:"p90_us"`
	P99us  float64 `json:"p99_us"`
	P999us float64 `json:"p99_9_us"`
	MaxUs  float64 `json:"max_us"`
}

func (h *histogram) summary() latencySummary {
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return latencySummary{
		Count:  h.n,
		P50us:  us(h.quantile(0.50)),
		P90us:  us(h.quantile(0.90)),
		P99us:  us(h.quantile(0.99)),
		P999us: us(h.quantile(0.999)),
		MaxUs:  us(time.Duration(h.max)),
	}
}
