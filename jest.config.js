/** Two projects: fast unit tests, and e2e tests that start real servers (run in band). */
const tsJest = ['ts-jest', { tsconfig: 'tsconfig.json' }];
/** @type {import('jest').Config} */
module.exports = {
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
      testTimeout: 120000,
    },
  ],
};
