package stream_test

import (
	"sync"
	"testing"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// Nodes that start together all set up the R3 stream and its bucket: a
// clustered create that times out for each of them is tried again.
func TestNodesStartingTogether(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		js := connect(t, c.URLs()[i])
		wg.Go(func() {
			if _, _, err := stream.Setup(t.Context(), js, "", 3); err != nil {
				t.Errorf("node %d: %v", i, err)
			}
		})
	}
	wg.Wait()
}

// The state bucket is read through its stream's leader: a direct get may
// be answered by a follower behind the last write, and a node could then
// miss the record of a 250 and send the message again. A second Setup (a
// publisher, another node) leaves it so for the handles it returns.
func TestStateReadsThroughTheLeader(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	for i := range 2 {
		_, kv, err := stream.Setup(t.Context(), js, "", 1)
		if err != nil {
			t.Fatal(err)
		}
		str, err := js.Stream(t.Context(), "KV_"+kv.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		if str.CachedInfo().Config.AllowDirect {
			t.Errorf("setup %d: the state bucket %s allows direct gets", i+1, kv.Bucket())
		}
	}
}
