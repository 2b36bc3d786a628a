/** The Park-Miller "minimal standard" generator that KVM's memstress guest uses. */
export class ParkMiller {
  private s: number;
  constructor(seed: number) {
    this.s = (seed >>> 0) % 2147483647 || 1;
  }
  /** The generator's whole state (to rewind it). */
  get state(): number {
    return this.s;
  }
  set state(s: number) {
    this.s = s;
  }
  next(): number {
    this.s = (this.s * 48271) % 2147483647;
    return this.s;
  }
}
