/**
 * Diffusion maths shared by DiffuRec and DiffuRecSys: noise schedules and their
 * coefficients (host, float64), and the forward process, DDPM posterior, reverse chain,
 * step embedding and noise draws on tensors.
 *
 * @module
 */
export * from "./schedule.ts";
export * from "./process.ts";
