"""`cbdc-bridge chaos`: a seeded, replayable fault campaign against a live network, with figures.

`schedule` plans the faults from the seed, `faults` injects them (kills, outages, a TCP fault
proxy, a full disk, clock jumps), `load` is the load client with its durable record of every
acknowledged instruction, `checks` the invariants, `campaign` runs it all and `soak` holds a
steady load for a while.
"""
