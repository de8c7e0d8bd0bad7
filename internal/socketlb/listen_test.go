package socketlb

import "net"

func listenUDP(addr string) (net.PacketConn, error) { return net.ListenPacket("udp", addr) }
