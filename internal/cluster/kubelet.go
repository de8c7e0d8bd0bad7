package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// NodeSpec describes a Node the harness registers, as a kubelet would.
type NodeSpec struct {
	Name string
	// InternalIPs become status.addresses of type InternalIP.
	InternalIPs []netip.Addr
	// PodCIDRs become spec.podCIDRs.
	PodCIDRs []string
	Labels   map[string]string
}

// CreateNode registers a Node and marks it Ready, as a kubelet does on start.
func (c *Cluster) CreateNode(ctx context.Context, spec NodeSpec) (*corev1.Node, error) {
	labels := map[string]string{corev1.LabelHostname: spec.Name, corev1.LabelOSStable: "linux"}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Labels: labels},
		Spec:       corev1.NodeSpec{PodCIDRs: spec.PodCIDRs},
	}
	if len(spec.PodCIDRs) > 0 {
		node.Spec.PodCIDR = spec.PodCIDRs[0]
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", spec.Name, err)
	}
	now := metav1.Now()
	created.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: spec.Name}}
	for _, ip := range spec.InternalIPs {
		created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	updated, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("node %s status: %w", spec.Name, err)
	}
	return updated, nil
}

// RunPod creates pod bound to node and reports it running with the given IPs
// (one per family) and ready, as the kubelet would once its containers started.
// The pod's namespace must exist.
func (c *Cluster) RunPod(ctx context.Context, pod *corev1.Pod, node string, ips ...netip.Addr) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	if pod.Namespace == "" {
		pod.Namespace = metav1.NamespaceDefault
	}
	pod.Spec.NodeName = node
	if len(pod.Spec.Containers) == 0 {
		pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}
	}
	if err := c.WaitServiceAccount(ctx, pod.Namespace); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	created, err := c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return c.SetPodStatus(ctx, created.Namespace, created.Name, true, ips...)
}

// SetPodStatus sets a pod's IPs (when any are given), phase Running and the
// Ready condition, through the status subresource.
func (c *Cluster) SetPodStatus(ctx context.Context, namespace, name string, ready bool, ips ...netip.Addr) (*corev1.Pod, error) {
	var out *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.NewTime(time.Now())
		st := &pod.Status
		st.Phase = corev1.PodRunning
		if st.StartTime == nil {
			st.StartTime = &now
		}
		if len(ips) > 0 {
			st.PodIP = ips[0].String()
			st.PodIPs = st.PodIPs[:0]
			for _, ip := range ips {
				st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
			}
		}
		cond := corev1.ConditionFalse
		if ready {
			cond = corev1.ConditionTrue
		}
		setCondition(st, corev1.PodScheduled, corev1.ConditionTrue, now)
		setCondition(st, corev1.PodInitialized, corev1.ConditionTrue, now)
		setCondition(st, corev1.ContainersReady, cond, now)
		setCondition(st, corev1.PodReady, cond, now)
		st.ContainerStatuses = st.ContainerStatuses[:0]
		for _, ctr := range pod.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: ctr.Name, Image: ctr.Image, ImageID: ctr.Image, Ready: ready, Started: &ready,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *st.StartTime}},
			})
		}
		out, err = c.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s status: %w", namespace, name, err)
	}
	return out, nil
}

func setCondition(st *corev1.PodStatus, t corev1.PodConditionType, s corev1.ConditionStatus, now metav1.Time) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			if st.Conditions[i].Status != s {
				st.Conditions[i].Status = s
				st.Conditions[i].LastTransitionTime = now
			}
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now})
}

// TerminatePod deletes a pod gracefully: with no kubelet to finish the job it
// stays, with a deletion timestamp, so its endpoints show as terminating until
// ForceDeletePod.
func (c *Cluster) TerminatePod(ctx context.Context, namespace, name string) error {
	grace := int64(3600)
	err := c.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil {
		return fmt.Errorf("terminate pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// ForceDeletePod removes a pod at once, as the kubelet does when its containers are gone.
func (c *Cluster) ForceDeletePod(ctx context.Context, namespace, name string) error {
	zero := int64(0)
	err := c.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// CreateNamespace creates a namespace and waits for its default ServiceAccount.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return c.WaitServiceAccount(ctx, name)
}
