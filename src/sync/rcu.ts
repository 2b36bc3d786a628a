import { aadd, aload, astore } from "./atomic.js";

/**
 * RCU-style read sections for lockless walkers that do not run in vCPU context (the
 * get-dirty-log ioctl, the audit). vCPU walkers are covered by the remote-TLB-flush protocol
 * instead, as in KVM (see src/kvm/requests.ts).
 *
 * Words: [0] the number of retirements so far, G (only grows); the current epoch is G + 1, so
 * epochs start at 1 while the shared words start zeroed. [1 + r] reader r's epoch while it is
 * inside a read section, 0 when quiescent. A reader publishes its epoch with a seq-cst store
 * before it loads any protected pointer; an object retired at epoch E may be reused once every
 * reader slot is 0 or > E.
 */
export const RCU_MAX_READERS = 8;
export const RCU_WORDS = 1 + RCU_MAX_READERS;

export class Rcu {
  constructor(
    readonly words: Int32Array,
    readonly base: number,
  ) {}

  readLock(reader: number): void {
    // + 1: a reader must never publish 0, which reads as "quiescent".
    astore(this.words, this.base + 1 + reader, aload(this.words, this.base) + 1);
  }

  readUnlock(reader: number): void {
    astore(this.words, this.base + 1 + reader, 0);
  }

  /** Starts a new grace period; returns the epoch that retired objects are tagged with. */
  retireEpoch(): number {
    return aadd(this.words, this.base, 1) + 1;
  }

  /** True once every reader that could have seen an object retired at `epoch` has left. */
  gracePeriodOver(epoch: number): boolean {
    for (let r = 0; r < RCU_MAX_READERS; r++) {
      const e = aload(this.words, this.base + 1 + r);
      if (e !== 0 && e <= epoch) return false;
    }
    return true;
  }
}
