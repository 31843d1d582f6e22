/** Two projects: fast unit tests, and e2e tests that start real servers (run in band). */
const tsJest = ['ts-jest', { tsconfig: 'tsconfig.json' }];
/** @type {import('jest').Config} */
module.exports = {
  // Global in jest 29 (a project-level testTimeout is ignored): e2e hooks start real servers.
  testTimeout: 120000,
  // A failed stand-up can leave a child process behind; CI must still finish and report.
  forceExit: true,
  projects: [
    {
      displayName: 'unit',
      testMatch: ['<rootDir>/test/unit/**/*.test.ts'],
      transform: { '^.+\\.ts$': tsJest },
      testEnvironment: 'node',
      setupFiles: ['<rootDir>/test/setup-env.ts'],
    },
    {
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/e2e/**/*.test.ts'],
      transform: { '^.+\\.ts$': tsJest },
      testEnvironment: 'node',
      setupFiles: ['<rootDir>/test/setup-env.ts'],
    },
  ],
};
