package realcluster

import (
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/kproxy/kproxy/internal/imagebuild"
)

// BuildKubeProxyImage writes upstream kube-proxy's image (KubeProxyImage) to
// out: the kube-proxy binary of the tools directory (static) and, for its
// nftables mode, this machine's nft with its libraries, which kube-proxy runs
// to program the kernel. Nothing else: like kubeadm's, the DaemonSet gives it
// its configuration and kubeconfig.
func BuildKubeProxyImage(toolsDir, out string) error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("kube-proxy image: %w (install nftables)", err)
	}
	s := &imagebuild.Spec{Tag: KubeProxyImage, Entrypoint: []string{"/usr/local/bin/kube-proxy"}}
	if err := s.AddProgram("/usr/local/bin/kube-proxy", filepath.Join(toolsDir, "kube-proxy")); err != nil {
		return err
	}
	if err := s.AddProgram("/usr/sbin/nft", nft); err != nil {
		return err
	}
	if ok, err := s.UpToDate(out); err == nil && ok {
		return nil
	}
	return s.WriteArchive(out)
}
