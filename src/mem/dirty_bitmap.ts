/** Bit counting on dirty bitmaps (Linux's hweight32 and bitmap_weight). */

export function hweight32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Set bits in a bitmap of 32-bit words: the dirty pages a get-dirty-log reported. */
export function bitmap_weight(bm: Uint32Array): number {
  let n = 0;
  for (const x of bm) n += hweight32(x);
  return n;
}
