{{descriptors}}
              %m{{step}} = nvvm.wgmma.mma_async %dd{{step}}a, %dd{{step}}b, {{acc_in}}, <m = 64, n = {{n}}, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>] : {{acc}} -> {{acc}}
