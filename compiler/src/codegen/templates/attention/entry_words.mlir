        %cKE = arith.constant {{key_words}} : index
        %kwe = arith.muli %bi, %cKE : index
        %cVE = arith.constant {{value_words}} : index
        %vwe = arith.muli %bi, %cVE : index
