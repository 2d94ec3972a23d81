package stages

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Files whose route tag is held stay in the queue folder, unclaimed, and
// Scan says when to look again; once the hold ends they are claimed.
func TestScanLeavesHeldRoutes(t *testing.T) {
	d := inspDirs(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := now
	s, err := OpenSpool(d, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Holds = NewRouteHolds()
	for i := range 3 {
		inspPlace(t, d.Queue, fmt.Sprintf("20261127T110000.00000000%dZ-slowslowslowslow+aaaa.eml", i), "x")
	}
	inspPlace(t, d.Queue, "20261127T110000.000000009Z-fastfastfastfast+bbbb.eml", "x")
	inspPlace(t, d.Queue, "20261127T110000.000000010Z-untaggeduntagged.eml", "x")
	until := now.Add(time.Minute)
	s.Holds.Hold([]string{"aaaa"}, until)

	var claimed []string
	collect := func(j *Job) bool { claimed = append(claimed, j.Name); return true }
	next, err := s.Scan(context.Background(), now, collect)
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 2 || !next.Equal(until) {
		t.Fatalf("with aaaa held: claimed %v, look again at %v; want the 2 others, at %v", claimed, next, until)
	}
	if j, _ := s.ScanOne("20261127T110000.000000000Z-slowslowslowslow+aaaa.eml"); j != nil {
		t.Fatal("ScanOne claimed a held file")
	}
	claimed = nil
	clock = until
	if _, err := s.Scan(context.Background(), until, collect); err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 3 {
		t.Fatalf("after the hold: claimed %v, want the 3 held files", claimed)
	}
}
