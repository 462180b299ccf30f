// A js-libp2p node (TCP + Noise + Yamux, identify, ping, Kademlia on /commucat/kad/1.0.0) that
// joins through a CommuCat node and looks a peer up in the DHT. Prints one JSON line.
// Usage: node find-peer.mjs <bootstrap multiaddr ending in /p2p/<id>> <peer id to find>
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'

const [bootAddr, target] = process.argv.slice(2)
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // js-libp2p's connection monitor pings every connection on its own schedule: off, so that the
  // only pings are the DHT's and ours, one after the other (see below).
  connectionMonitor: { enabled: false },
  services: {
    identify: identify(),
    ping: ping(),
    // On loopback keep 127.0.0.1 addresses: the default mapper drops private ones.
    dht: kadDHT({ protocol: '/commucat/kad/1.0.0', clientMode: true, peerInfoMapper: passthroughMapper }),
  },
})
const bootId = peerIdFromString(bootAddr.split('/p2p/')[1])
const identified = new Promise((resolve) => {
  node.addEventListener('peer:identify', (evt) => {
    if (evt.detail.peerId.equals(bootId)) resolve(evt.detail)
  })
})
await node.dial(multiaddr(bootAddr))
const id = await identified
// The DHT takes a peer into its routing table once identify shows it speaks the DHT protocol and
// a ping succeeded. Our own ping waits for that one: rust-libp2p answers one inbound ping stream per
// connection at a time and resets the older one (the ping spec says it SHOULD accept two).
for (let i = 0; i < 100 && node.services.dht.routingTable.size === 0; i++) {
  await new Promise((resolve) => setTimeout(resolve, 100))
}
const rtt = await node.services.ping.ping(bootId)
const found = await node.peerRouting.findPeer(peerIdFromString(target), { signal: AbortSignal.timeout(20000) })
console.log(JSON.stringify({
  ping_rtt_ms: rtt,
  agent_version: id.agentVersion,
  protocols: id.protocols,
  found: found.multiaddrs.map(String),
}))
await node.stop()
