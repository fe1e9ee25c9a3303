/** Knowing the backups are good: the scheduled verification of every copy, and the key-file check. */
export { runVerification } from './run';
