package pipeline

import (
	"testing"

	"go.uber.org/zap"
)

// nats.embedded.sync_always reaches the embedded server's JetStream: every
// write is flushed before it is acknowledged. Without it the server keeps
// NATS's default (a flush every two minutes).
func TestEmbeddedSyncAlways(t *testing.T) {
	for _, always := range []bool{false, true} {
		e := &NATSEmbedded{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), SyncAlways: always}
		s, err := startEmbedded(e, "sync-test", zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.JetStreamConfig()
		s.Shutdown()
		s.WaitForShutdown()
		if cfg == nil || cfg.SyncAlways != always {
			t.Errorf("sync_always %v: the server's JetStream config is %+v", always, cfg)
		}
	}
}
